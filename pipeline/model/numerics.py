"""Training's numeric mode. "bf16" runs the convolutions and matrix products under CPU autocast in bfloat16
(master weights, BatchNorm statistics, losses and optimizer stay float32); "fp32" runs everything in float32.

A CPU without native BF16 instructions falls back to fp32 with a notice. The decision reads the CPU's flags
without importing torch, so that the build graph can put the mode actually used into the training step's cache
key: a fallback run is never stored or restored as a bf16 result.
"""
import platform
import sys
from pathlib import Path

PRECISIONS = ("bf16", "fp32")
# /proc/cpuinfo flags that mean native BF16 arithmetic (x86: AVX-512 BF16 or AMX; Arm: FEAT_BF16).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset:
    """The first processor's feature flags ("flags" on x86, "Features" on Arm); empty where unreadable."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def precision_used(requested: str, flags: frozenset | None = None) -> str:
    """The numeric mode training runs in for `requested` on this CPU."""
    if requested == "bf16" and not BF16_FLAGS & (cpu_flags() if flags is None else flags):
        return "fp32"
    return requested


def fallback_notice(requested: str, used: str) -> str | None:
    if requested == used:
        return None
    return (f"training.precision = {requested!r}: this CPU ({platform.processor() or platform.machine()}) has no "
            f"native BF16 instructions ({' / '.join(sorted(BF16_FLAGS))}); training in {used} instead, which gives "
            f"a different .pth than a BF16 machine (set training.precision = \"{used}\" to silence this)")


def warn_on_fallback(requested: str, used: str) -> None:
    notice = fallback_notice(requested, used)
    if notice:
        print(notice, file=sys.stderr)
