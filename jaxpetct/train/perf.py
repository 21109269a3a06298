"""Throughput, MFU and the accelerator table.

MFU = model FLOPs per step (`jaxpetct.train.flops.count_flops`: matmuls of the traced step with loops multiplied
out, remat recomputation left out) / (step time x devices x the device's dense bf16 peak); HFU uses the executed
FLOPs (recomputation included). XLA's cost analysis counts each loop body once and is kept only for comparison.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from jaxpetct.train.flops import FlopCount, count_flops, count_jaxpr_flops  # noqa: F401 (public here too)

# -- the accelerator table ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Per-chip vendor figures: dense bf16 FLOP/s (no sparsity), HBM bytes/s, HBM bytes. Sources: NVIDIA's H100,
    H200, A100 and L4 datasheets; Google Cloud's TPU v4/v5e/v5p/v6e system pages. `kinds`: device_kind substrings."""

    name: str
    peak_bf16_flops: float
    hbm_bandwidth: float
    memory_bytes: float
    kinds: tuple[str, ...]


DEVICE_SPECS: dict[str, DeviceSpec] = {
    "h100": DeviceSpec("NVIDIA H100 SXM", 989e12, 3.35e12, 80e9, ("h100",)),
    "h100_pcie": DeviceSpec("NVIDIA H100 PCIe", 756e12, 2.0e12, 80e9, ("h100 pcie",)),
    "h100_nvl": DeviceSpec("NVIDIA H100 NVL", 835e12, 3.9e12, 94e9, ("h100 nvl",)),
    "h200": DeviceSpec("NVIDIA H200 SXM", 989e12, 4.8e12, 141e9, ("h200",)),
    "a100": DeviceSpec("NVIDIA A100 80GB SXM", 312e12, 2.039e12, 80e9, ("a100",)),
    "a100_40gb": DeviceSpec("NVIDIA A100 40GB", 312e12, 1.555e12, 40e9, ("a100-sxm4-40gb", "a100-pcie-40gb")),
    "l4": DeviceSpec("NVIDIA L4", 121e12, 0.3e12, 24e9, ("l4",)),
    "tpu_v4": DeviceSpec("TPU v4", 275e12, 1.2e12, 32e9, ("tpu v4",)),
    "tpu_v5e": DeviceSpec("TPU v5e", 197e12, 0.82e12, 16e9, ("tpu v5 lite", "tpu v5e")),
    "tpu_v5p": DeviceSpec("TPU v5p", 459e12, 2.765e12, 95e9, ("tpu v5p", "tpu v5")),
    "tpu_v6e": DeviceSpec("TPU v6e (Trillium)", 918e12, 1.64e12, 32e9, ("tpu v6 lite", "tpu v6e")),
}


def device_spec(name: str) -> DeviceSpec:
    """The table entry for a short target name ("h100", "tpu_v5p", ...); KeyError for unknown names."""
    return DEVICE_SPECS[name.lower().replace("-", "_")]


def spec_for_device(device: Optional[jax.Device] = None) -> Optional[DeviceSpec]:
    """The entry whose longest `kinds` substring occurs in the device's kind; None on CPUs and unknown chips."""
    kind = getattr(device or jax.devices()[0], "device_kind", "").lower()
    best = max(((len(k), s) for s in DEVICE_SPECS.values() for k in s.kinds if k in kind),
               key=lambda x: x[0], default=None)
    return best[1] if best else None


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
    """Vendor bf16 peak for known accelerators; None on CPU or unknown kinds (then MFU is not reported)."""
    return spec.peak_bf16_flops if (spec := spec_for_device(device)) else None


def hbm_bandwidth_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
    return spec.hbm_bandwidth if (spec := spec_for_device(device)) else None


def mfu(model_flops_per_step: Optional[float], step_seconds: float, num_devices: int = 1,
        peak: Optional[float] = None) -> Optional[float]:
    """FLOPs of one step over all devices / (step time × devices × per-device peak); None where no peak is known.

    Pass `count_flops(...).model` for MFU and `.executed` for HFU. `num_devices=1` with a per-device figure (what
    `compiled_flops` returns for an SPMD program) gives the same ratio.
    """
    peak = peak if peak is not None else peak_flops_per_device()
    if not model_flops_per_step or not peak or step_seconds <= 0 or num_devices < 1:
        return None
    return model_flops_per_step / (step_seconds * num_devices * peak)


# -- XLA's own figures ---------------------------------------------------------------------------------------------


def compiled_flops(compiled: Any) -> Optional[float]:
    """XLA's FLOPs of one call of a compiled executable (one partition), or None if XLA won't say.

    Undercounts loops (each body once): use `count_flops` for MFU. Kept for callers comparing the two.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled: Any) -> Optional[int]:
    """Peak device memory of a compiled executable: arguments + outputs + temporaries - aliased (donated)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    size = lambda k: getattr(m, f"{k}_size_in_bytes", 0)  # noqa: E731
    return int(size("argument") + size("output") + size("temp") - size("alias"))

