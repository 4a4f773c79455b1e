"""Logical-name sharding constraints that work with no mesh, an Auto mesh or an Explicit mesh.

NNX has no logical-name `with_sharding_constraint` for activations; these helpers resolve names
through the active `nnx.logical_axis_rules` and the mesh set with `jax.set_mesh`.
"""

from __future__ import annotations

from typing import Optional

import jax
from flax.core import spmd
from jax.sharding import PartitionSpec as P

from .axes import logical


def logical_spec(*names: Optional[str]) -> P:
    """PartitionSpec of `names` under the active logical-axis rules (unmapped -> replicated)."""
    rules = dict(spmd.get_logical_axis_rules())
    return P(*(rules.get(n) if n is not None else None for n in logical(*names)))


def _mesh_or_none():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def constrain(x: jax.Array, *names: Optional[str]) -> jax.Array:
    """Lay `x` out as `names` say: reshard (Explicit), constraint (Auto), no-op (no mesh)."""
    mesh = _mesh_or_none()
    if mesh is None:
        return x
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, logical_spec(*names))
    return jax.lax.with_sharding_constraint(x, logical_spec(*names))


def out_sharding(*names: Optional[str]) -> Optional[P]:
    """`out_sharding=` for contractions over sharded dims; required only on Explicit meshes."""
    mesh = _mesh_or_none()
    if mesh is not None and mesh.are_all_axes_explicit:
        return logical_spec(*names)
    return None


def fit_spec(spec: P, shape: tuple[int, ...], mesh) -> tuple[P, list[int]]:
    """`spec` with mesh axes removed from dims they do not divide (those dims replicate).

    Returns the fitted spec and the indices of the dims that lost their partitioning, so the
    caller can report them (e.g. 6 heads cannot be split 4 ways).
    """
    fitted, dropped = [], []
    for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        ways = 1
        for name in names:
            ways *= mesh.shape[name]
        if names and shape[dim] % ways:
            fitted.append(None)
            dropped.append(dim)
        else:
            fitted.append(axes)
    return P(*fitted), dropped
