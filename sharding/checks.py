"""The "sufficiently sharded" check: big weights must not be silently replicated.

When a dimension cannot be split over its mesh axes (20 heads over 8 devices) the weight falls
back to replication on that dimension. For small weights that is harmless; for big ones it
multiplies memory per device and usually means the mesh shape was a poor choice, so it is an
error unless the caller allows it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

DEFAULT_MIN_BYTES = 1 << 20  # weights below 1 MiB may replicate freely


class ShardingError(ValueError):
    """A weight that the rules split would be replicated on this mesh."""


@dataclasses.dataclass(frozen=True)
class Replicated:
    path: str
    shape: tuple[int, ...]
    nbytes: int
    dims: tuple[int, ...]  # dims the rules split but the mesh could not


def check_sufficiently_sharded(replicated: Sequence[Replicated], min_bytes: int = DEFAULT_MIN_BYTES) -> None:
    """Raise ShardingError naming every replicated weight of at least `min_bytes`."""
    big = [r for r in replicated if r.nbytes >= min_bytes]
    if big:
        listed = "; ".join(f"{r.path} {r.shape} dims {list(r.dims)} ({r.nbytes / 2**20:.1f} MiB)"
                           for r in big[:5])
        raise ShardingError(f"{len(big)} weights of >= {min_bytes / 2**20:.1f} MiB cannot be split on this "
                            f"mesh and would be replicated on every device: {listed}. Choose a `model` "
                            "axis size that divides the model's heads and widths, or allow replication.")


def nbytes(shape: Sequence[int], itemsize: int) -> int:
    return math.prod(shape) * itemsize
