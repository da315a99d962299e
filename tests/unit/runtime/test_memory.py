"""The process's memory and its limit, read from fake /proc and cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

from bertserve.runtime.memory import memory_limit_bytes, resident_bytes


def fake_proc(root: Path, statm: str = "5000 1200 300 1 0 900 0\n") -> Path:
    (root / "self").mkdir(parents=True)
    (root / "self" / "statm").write_text(statm)
    (root / "meminfo").write_text("MemTotal:       24576000 kB\nMemFree:        1000 kB\n")
    return root


def test_resident_bytes_reads_statm(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc")
    assert resident_bytes(proc) == 1200 * os.sysconf("SC_PAGE_SIZE")
    assert resident_bytes(tmp_path / "nowhere") is None
    assert resident_bytes(fake_proc(tmp_path / "bad", statm="garbage")) is None
    assert resident_bytes(Path("/proc")) is not None  # this process, on Linux


def test_the_cgroup_limit_wins_over_the_machine(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("2147483648\n")
    assert memory_limit_bytes(v2, proc) == 2 << 30
    (v2 / "memory.max").write_text("max\n")  # no limit: the machine's memory
    assert memory_limit_bytes(v2, proc) == 24576000 * 1024
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory_limit_bytes(v1, proc) == 1 << 30
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "none"
    assert memory_limit_bytes(v1, proc) == 24576000 * 1024
    assert memory_limit_bytes(tmp_path / "none", tmp_path / "none") is None
