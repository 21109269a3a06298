"""Throughput and MFU, counted from what XLA actually compiled.

Hand formulas (6·N·tokens) miss the vision tower, frozen parts that need no weight gradient, attention's
quadratic term and remat recomputation. XLA's cost analysis of the compiled step counts all of them, so MFU
here is "useful FLOPs the compiled program performs / peak", with remat recomputation included (report it as
hardware FLOPs utilisation if remat is on).
"""
from __future__ import annotations

from typing import Any, Optional

import jax

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
_PEAK_BF16 = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
    """Vendor bf16 peak for known accelerators; None on CPU or unknown kinds (then MFU is not reported)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    for name, flops in sorted(_PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return None


def compiled_flops(compiled: Any) -> Optional[float]:
    """FLOPs of one call of a compiled executable (summed over its partitions), or None if XLA won't say."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled: Any) -> Optional[int]:
    """Peak device memory of a compiled executable: arguments + outputs + temporaries - aliased (donated)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = (
        getattr(m, "argument_size_in_bytes", 0)
        + getattr(m, "output_size_in_bytes", 0)
        + getattr(m, "temp_size_in_bytes", 0)
        - getattr(m, "alias_size_in_bytes", 0)
    )
    return int(total)


def mfu(flops_per_step: Optional[float], step_seconds: float) -> Optional[float]:
    """`flops_per_step` is per device: XLA's cost analysis of an SPMD program reports one partition's FLOPs."""
    peak = peak_flops_per_device()
    if not flops_per_step or not peak or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak
