"""Which precision a step runs in: training.precision, and what `auto` picks on this device.

`auto` is bf16 autocast on GPUs. On CPUs it is bf16 where the CPU's bf16 kernels make a step
faster than fp32, and fp32 elsewhere (orch's CIFAR nets, batch 128 of 28x28, 2 threads):
- Intel CPUs with AMX (amx_bf16: oneDNN's bf16 convolutions run on its tiles): bf16;
- AMD CPUs with AVX512_BF16 (Zen 4 and later): bf16, seen at about 1.9x (ResNet-20) and 2.1x
  (ResNet-56) fp32's speed on an EPYC;
- Intel CPUs with AVX512_BF16 but no AMX (Cooper Lake, or a VM that hides AMX): fp32, where
  bench/precision.py measured bf16 autocast at 0.69-0.86x of fp32's images/s (the reorders and
  casts around oneDNN's avx512_core_bf16 convolutions cost more than they save on these layers);
- CPUs without native bf16: fp32 (bf16 would be emulated).
The choice is a function of the CPU's vendor and flags, never of a timing taken at start-up, so
a spec trains in the same precision every time on the same kind of machine (a run reproduces).
"""

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel | AuthenticAMD | ... | unknown
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)


@dataclass(frozen=True)
class Precision:
    value: str  # fp32 | bf16 | fp16
    reason: str  # why, in words: "bf16 (auto: AMD CPU with AVX512_BF16)"

    def __str__(self) -> str:
        return f"{self.value} ({self.reason})"


def cpu_info(path: Path = CPUINFO) -> CpuInfo:
    """The first processor's vendor and flags (Linux); unknown and none elsewhere."""
    vendor, flags = "unknown", frozenset()
    try:
        text = path.read_text()
    except OSError:
        return CpuInfo(vendor, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and vendor == "unknown":
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if vendor != "unknown" and flags:
            break
    return CpuInfo(vendor, flags)


def choose_precision(precision: str, device_type: str, cpu: CpuInfo | None = None) -> Precision:
    """training.precision on a device of `device_type` ('cuda' or 'cpu'), with the reason."""
    if precision != "auto":
        return Precision(precision, "training.precision")
    if device_type == "cuda":
        return Precision("bf16", "auto: GPU")
    cpu = cpu or cpu_info()
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(cpu.vendor, cpu.vendor)
    if "amx_bf16" in cpu.flags:
        return Precision("bf16", f"auto: {vendor} CPU with AMX")
    if "avx512_bf16" in cpu.flags and vendor == "AMD":
        return Precision("bf16", "auto: AMD CPU with AVX512_BF16")
    if "avx512_bf16" in cpu.flags:
        return Precision("fp32", f"auto: {vendor} CPU with AVX512_BF16 but no AMX, where bf16 steps are slower")
    return Precision("fp32", "auto: CPU without native bf16")
