"""The decoder's explicit key/value cache: a static-shape pytree passed in and out of each call.

Self-attention keys/values are preallocated to the decode length and written in place at the
current offset; cross-attention keys/values are computed once from the encoder output at prefill
and only read afterwards. Tuples hold one array per decoder layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange

from whisper_nnx.sharding import constrain

CACHE_AXES = ("batch", "heads", "cache_len", "head_dim")
CROSS_AXES = ("batch", "heads", "audio_len", "head_dim")


class KVCache(NamedTuple):
    """Per-layer caches, heads-major: self_k/self_v [B, H, C, K] and cross_k/cross_v [B, H, S, K]."""

    self_k: tuple[jax.Array, ...]
    self_v: tuple[jax.Array, ...]
    cross_k: tuple[jax.Array, ...]
    cross_v: tuple[jax.Array, ...]

    @classmethod
    def allocate(cls, cross_kv: list[tuple[jax.Array, jax.Array]], length: int) -> "KVCache":
        """Zeroed self-attention caches of `length` positions beside the given cross K/V."""

        def zeros(like: jax.Array) -> jax.Array:
            batch, heads, _, head_dim = like.shape
            return constrain(jnp.zeros((batch, heads, length, head_dim), like.dtype), *CACHE_AXES)

        return cls(
            self_k=tuple(zeros(k) for k, _ in cross_kv),
            self_v=tuple(zeros(v) for _, v in cross_kv),
            cross_k=tuple(constrain(k, *CROSS_AXES) for k, _ in cross_kv),
            cross_v=tuple(constrain(v, *CROSS_AXES) for _, v in cross_kv),
        )

    def without_cross(self) -> tuple["KVCache", tuple]:
        """(this cache with empty cross K/V, the cross K/V). Decode loops carry only the part
        that changes: a while_loop carry may be copied every iteration, and the cross K/V,
        read-only after prefill, are by far the largest part (S = 1500 positions)."""
        return self._replace(cross_k=(), cross_v=()), (self.cross_k, self.cross_v)

    def with_cross(self, cross: tuple) -> "KVCache":
        """Reattach cross K/V taken off by `without_cross`."""
        return self._replace(cross_k=cross[0], cross_v=cross[1])

    @property
    def length(self) -> int:
        """C, the number of self-attention positions the cache holds."""
        return self.self_k[0].shape[2]

    def reorder(self, rows: jax.Array) -> "KVCache":
        """Gather batch rows: rows [B] of source indices."""
        return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), self)

    def reorder_beams(self, source: jax.Array) -> "KVCache":
        """Beams after a search step: source [B, K] gives, per example, the beam each new beam
        extends (rows are example-major, B * K). The gather runs along the beam axis only, so
        it stays on the devices that hold the example when the batch is sharded. Cross K/V are
        the same for every beam of an example and are left as they are."""
        batch, beams = source.shape

        def gather(a: jax.Array) -> jax.Array:
            grouped = rearrange(a, "(b k) ... -> b k ...", k=beams)
            index = source.reshape(batch, beams, *([1] * (grouped.ndim - 2)))
            return rearrange(jnp.take_along_axis(grouped, index, axis=1), "b k ... -> (b k) ...")

        return self._replace(self_k=tuple(map(gather, self.self_k)), self_v=tuple(map(gather, self.self_v)))
