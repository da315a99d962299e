"""What this CPU can run fast: the instruction-set features that decide which precision pays.

int8 pays where the CPU multiplies 8-bit integers natively (AVX-512 VNNI, AVX-VNNI, AMX-INT8): without
VNNI the u8 x s8 multiply-add of AVX2 saturates at 16 bits, so ONNX Runtime's int8 kernels either lose
accuracy on 8-bit weights or need 7-bit weights (`reduce_range`), and gain less. bf16 pays only with
AVX-512-BF16 or AMX-BF16; elsewhere OpenVINO emulates it or ignores the hint. The detection is a
pure function over the `flags` line of /proc/cpuinfo, so tests simulate any CPU.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


class CpuFeature(StrEnum):
    """The features an artifact's gate records as needed to run as it was measured."""

    VNNI = "vnni"  # int8 dot products in one instruction
    BF16 = "bf16"  # bf16 dot products in one instruction


# /proc/cpuinfo flag names that give each feature
_FLAGS: dict[CpuFeature, frozenset[str]] = {
    CpuFeature.VNNI: frozenset({"avx512_vnni", "avx_vnni", "amx_int8"}),
    CpuFeature.BF16: frozenset({"avx512_bf16", "amx_bf16"}),
}


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The CPU's relevant features; `known` is False where they could not be read (then nothing
    is assumed present)."""

    features: frozenset[CpuFeature]
    flags: frozenset[str] = frozenset()  # the matching raw flags, for log lines
    known: bool = True

    @classmethod
    def from_flags(cls, flags: frozenset[str] | set[str]) -> CpuFeatures:
        present = frozenset(f for f, names in _FLAGS.items() if names & flags)
        matched = frozenset(n for names in _FLAGS.values() for n in names & flags)
        return cls(present, matched)

    @classmethod
    def probe(cls) -> CpuFeatures:
        """This machine's features: /proc/cpuinfo on Linux; unknown (none) elsewhere."""
        if platform.system() != "Linux":
            return cls(frozenset(), known=False)
        try:
            text = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return cls(frozenset(), known=False)
        return cls.from_flags(parse_cpuinfo_flags(text))

    def has(self, feature: CpuFeature) -> bool:
        return feature in self.features

    def describe(self, feature: CpuFeature) -> str:
        """ "VNNI present (avx512_vnni)" / "no VNNI" / "VNNI unknown (cpu flags unreadable)"."""
        name = feature.value.upper()
        if not self.known:
            return f"{name} unknown (CPU flags unreadable)"
        names = sorted(_FLAGS[feature] & self.flags)
        return f"{name} present ({', '.join(names)})" if names else f"no {name}"


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo (every core of a machine reports the same)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
