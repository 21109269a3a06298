"""Device mesh with the project's three axes: data (pure data parallel), fsdp (sharded weights), tensor.

Axes are `AxisType.Auto`: the compiler propagates shardings from the parameter and activation annotations in
`rules.py` (the GSPMD style that NNX logical-axis metadata is written for). Explicit axes would make every op's
sharding part of its type, which the NNX model code does not attempt. We pass the axis types explicitly because
`jax.make_mesh` defaults to Explicit axes in newer JAX.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh
from jaxpetct.errors import UserError

AXES = ("data", "fsdp", "tensor")


class MeshError(UserError, ValueError):
    """A mesh shape that cannot be laid over the available devices; the message gives both."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1, meaning "all devices left over"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "MeshConfig":
        unknown = set(cfg) - set(AXES)
        if unknown:
            raise MeshError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
        return cls(**{k: int(v) for k, v in cfg.items()})

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise MeshError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise MeshError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive or -1")
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % fixed:
                raise MeshError(f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not divisible by {fixed}")
            sizes[sizes.index(-1)] = num_devices // fixed
        if math.prod(sizes) != num_devices:
            raise MeshError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, found {num_devices}")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig | Mapping[str, Any] | None = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process)."""
    if config is None:
        config = MeshConfig()
    elif not isinstance(config, MeshConfig):
        config = MeshConfig.from_mapping(config)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def single_device_mesh(device: Optional[jax.Device] = None) -> Mesh:
    """A 1x1x1 mesh, so the same sharded code path also runs on one device."""
    return make_mesh(MeshConfig(1, 1, 1), [device or jax.devices()[0]])
