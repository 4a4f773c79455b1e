"""Device meshes with axes `data` and `model`, from a `data=D,model=M` spec.

`-1` means "the devices left over". On several hosts, `dcn=` gives how the two axes span
hosts/slices (data-centre network) while the main spec gives the shape within one host/slice
(ICI); the mesh then keeps fast collectives (`model`) inside a host.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXIS_NAMES = ("data", "model")


def parse_mesh_spec(spec: str, n_devices: int) -> tuple[int, int]:
    """"data=4,model=2" (or "4x2", or "data=-1") -> (data, model) sizes multiplying to n_devices."""
    sizes = {"data": -1, "model": 1}
    text = spec.strip()
    if "x" in text and "=" not in text:
        parts = text.split("x")
        if len(parts) != 2:
            raise ValueError(f"mesh spec {spec!r}: expected DxM")
        sizes = dict(zip(AXIS_NAMES, (int(p) for p in parts)))
    elif text:
        for item in text.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in sizes or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"mesh spec {spec!r}: expected data=D,model=M (-1 = the rest)")
            sizes[name] = int(value)
    unknown = [n for n, v in sizes.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh spec {spec!r}: only one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if any(v == 0 or v < -1 for v in sizes.values()) or n_devices % known:
        raise ValueError(f"mesh spec {spec!r} does not fit {n_devices} devices")
    if unknown:
        sizes[unknown[0]] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh spec {spec!r} uses {math.prod(sizes.values())} of {n_devices} devices; "
                         "use -1 for the rest")
    return sizes["data"], sizes["model"]


def make_mesh(spec: str = "data=-1", *, dcn: Optional[str] = None,
              devices: Optional[Sequence[jax.Device]] = None, explicit: bool = False) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: all devices of all processes).

    Axes are Auto by default (the compiler propagates shardings); `explicit=True` makes
    layouts part of the types. With `dcn`, e.g. "data=2" for two hosts, the spec is per host
    and the mesh is the product, laid out so `model` never crosses hosts.
    """
    devices = list(devices) if devices is not None else jax.devices()
    axis_types = ((AxisType.Explicit if explicit else AxisType.Auto),) * 2
    if dcn is None:
        shape = parse_mesh_spec(spec, len(devices))
        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    else:
        granules = len({d.process_index for d in devices})
        dcn_shape = parse_mesh_spec(dcn, granules)
        ici_shape = parse_mesh_spec(spec, len(devices) // granules)
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices=devices,
                                                    process_is_granule=True, allow_split_physical_axes=True)
    return Mesh(np.asarray(grid), AXIS_NAMES, axis_types=axis_types)


def describe(mesh: Mesh) -> dict:
    """JSON-friendly summary for results metadata: axis sizes, device kind and count, processes."""
    devices = mesh.devices.ravel()
    return {"shape": dict(zip(mesh.axis_names, mesh.devices.shape)),
            "devices": int(devices.size), "device_kind": devices[0].device_kind,
            "platform": devices[0].platform, "processes": len({d.process_index for d in devices})}
