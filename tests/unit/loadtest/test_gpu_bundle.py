"""scripts/gpu_bundle.py's binary surgery: fatbin entries zeroed by architecture, ELF sections found."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_bundle.py"


@pytest.fixture(scope="module")
def bundle() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bundle", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(kind: int, arch: int, payload: bytes) -> bytes:
    """One fatbin entry: a 64-byte header (kind, header size, payload size, arch at 28), then the payload."""
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x0101, 64, len(payload))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_only_code_the_kept_architectures_can_run_survives(bundle: ModuleType) -> None:
    first = fatbin(entry(2, 80, b"\x11" * 40), entry(2, 90, b"\x22" * 24), entry(1, 80, b"\x33" * 16))
    second = fatbin(entry(2, 120, b"\x44" * 32), entry(1, 100, b"\x55" * 8))
    section = bytearray(first + bytes(8) + second)  # 8 bytes of padding between two fatbins
    before = bytes(section)
    counts = bundle.strip_fatbins(memoryview(section), {90})
    assert len(section) == len(before)
    assert counts == {"kept": 24 + 16, "zeroed": 40 + 32 + 8}
    # sm_90 cubin and PTX older than sm_90 (the driver compiles it) stay byte for byte
    assert b"\x22" * 24 in section and b"\x33" * 16 in section
    # other architectures' cubins and PTX newer than sm_90 are gone
    assert b"\x11" * 40 not in section and b"\x44" * 32 not in section and b"\x55" * 8 not in section
    assert section.count(0) == before.count(0) + 40 + 32 + 8
    # every header is unchanged: the loader still walks the same layout
    for offset in (0, 16, 16 + 64 + 40, 16 + 2 * 64 + 40 + 24):
        assert section[offset : offset + 16] == before[offset : offset + 16]


def test_several_architectures_can_be_kept(bundle: ModuleType) -> None:
    section = bytearray(
        fatbin(entry(2, 80, b"\x11" * 8), entry(2, 90, b"\x22" * 8), entry(2, 75, b"\x33" * 8))
    )
    assert bundle.strip_fatbins(memoryview(section), {80, 90}) == {"kept": 16, "zeroed": 8}
    assert b"\x33" * 8 not in section and b"\x11" * 8 in section and b"\x22" * 8 in section


def test_elf_sections_are_found_by_name(bundle: ModuleType) -> None:
    image = Path(sys.executable).resolve().read_bytes()
    text = bundle.find_section(image, ".text")
    assert text is not None
    offset, size = text
    assert size > 0 and offset + size <= len(image)
    assert bundle.find_section(image, ".nv_fatbin") is None  # no device code in the interpreter
    with pytest.raises(ValueError, match="ELF"):
        bundle.find_section(b"#!/bin/sh\n" + bytes(64), ".text")
