"""What the process holds and what it may hold: resident memory, and the limit it runs under
(its cgroup's, in a container; else the machine's). Linux only; None wherever it cannot tell."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes a number near 2**63 for "no limit"


def resident_bytes(proc: Path = PROC) -> int | None:
    """This process's resident set size."""
    try:
        pages = int((proc / "self" / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def memory_limit_bytes(cgroup: Path = CGROUP, proc: Path = PROC) -> int | None:
    """The memory this process may use: its cgroup's limit (v2 `memory.max`, v1
    `memory.limit_in_bytes`) when there is one, else the machine's total memory."""
    for limit_file in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < NO_LIMIT:
            return int(text)
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None
