"""Attention math: the plain scaled dot-product `attend`, and kernels for the encoder's long
self-attention (1500 audio positions attend to 1500).

The plain formulation (`attend`) materialises float32 scores [B, H, 1500, 1500], runs a
softmax over them in memory and contracts again: on a CPU that pass over 54 MB per head and
window dominated the encoder (it ran at a third of the speed of the rest). Choices:

- `tiled`: per (row, head), queries in blocks of `QUERY_BLOCK`; each block's scores stay in
  cache, the softmax is normalised after the probs-values product. Under a mesh it runs per
  shard (`jax.shard_map` over the batch and head axes), so no device gathers another's rows.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, the fused flash kernel on
  NVIDIA GPUs (bfloat16/float16 only).
- `dense`: `attend`, what XLA fuses well on TPU and GPU in float32.

`auto` picks tiled on CPU, cudnn on GPU for 16-bit compute, dense otherwise. The choice is a
setting of the model (`Whisper(..., attention_kernel=...)`, stored on its attention layers and
so part of its graph): two models in one process may use different kernels, and a traced
program depends on nothing but its model and inputs. `WHISPER_NNX_ATTENTION` is only the
default of that setting, read once when a model is built (`default_kernel`).

Shapes: q [B, T, H, K], k and v heads-major [B, H, S, K] -> [B, T, H, K].
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
from einops import rearrange

from whisper_nnx.sharding.constraints import fit_spec, logical_spec

KERNELS = ("auto", "dense", "tiled", "cudnn")
KERNEL_ENV = "WHISPER_NNX_ATTENTION"  # default of a model's `attention_kernel` setting
QUERY_BLOCK = 750  # two blocks per 30 s window; 500..1500 measured within 10% on CPU
_F32 = jnp.float32
_MASKED = jnp.finfo(jnp.float32).min


def check_kernel(name: str) -> str:
    """`name` if it is one of `KERNELS`; ValueError otherwise."""
    if name not in KERNELS:
        raise ValueError(f"unknown attention implementation {name!r}; choose from {KERNELS}")
    return name


def default_kernel() -> str:
    """The kernel setting of a model built without one: `$WHISPER_NNX_ATTENTION`, else auto."""
    name = os.environ.get(KERNEL_ENV, "auto")
    if name not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={name!r}: choose from {KERNELS}")
    return name


def resolve_kernel(dtype, backend: Optional[str] = None, kernel: str = "auto") -> str:
    """The kernel that the setting `kernel` means for `dtype` on `backend` (default: JAX's)."""
    if check_kernel(kernel) != "auto":
        return kernel
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "tiled"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "dense"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
           scores_out: Optional[list] = None) -> jax.Array:
    """Scaled dot-product attention.

    q [B, T, H, K], k/v [B, H, S, K] (heads-major, so the long S axis is never transposed per
    call), mask broadcastable to [B, H, T, S] (True = visible) -> [B, T, H, K]. Scores and
    softmax in float32. `scores_out`, when given, receives the scaled, masked scores
    [B, H, T, S] before the softmax (word alignment reads cross-attention this way).

    Keys shared by groups of query rows (beam search: k/v [B, H, S, K] for q [B G, T, H, K],
    rows example-major) are attended by each group's G T queries at once.
    """
    if k.shape[0] != q.shape[0]:
        groups, rows = k.shape[0], q.shape[0]
        if rows % groups or mask is not None:
            raise ValueError(f"{rows} query rows cannot share keys of {groups} rows (mask: {mask is not None})")
        grouped = rearrange(q, "(g r) t h k -> g (r t) h k", g=groups)
        return rearrange(attend(grouped, k, v, None, scores_out), "g (r t) h k -> (g r) t h k", t=q.shape[1])
    scores = jnp.einsum("bthk,bhsk->bhts", q, k, preferred_element_type=_F32)
    scores = scores * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = jnp.where(mask, scores, _MASKED)
    if scores_out is not None:
        scores_out.append(scores)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bhsk->bthk", probs, v, preferred_element_type=_F32).astype(v.dtype)


def long_attention(q: jax.Array, k: jax.Array, v: jax.Array, kernel: str = "auto") -> jax.Array:
    """Unmasked attention of q [B, T, H, K] over k, v [B, H, S, K] -> [B, T, H, K] with the
    kernel that the setting `kernel` resolves to for q's dtype."""
    name = resolve_kernel(q.dtype, kernel=kernel)
    if name == "dense":
        return attend(q, k, v, None)
    if name == "cudnn":
        return jax.nn.dot_product_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                            implementation="cudnn")
    return _per_shard(tiled_attention, q, k, v)


def tiled_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int = QUERY_BLOCK) -> jax.Array:
    """Attention one (row, head) and one block of `block` queries at a time -> [B, T, H, K].

    Scores [block, S] and their exponentials are float32; each block is normalised after
    its product with the values (one division per output instead of per score).
    """
    b, t, h, d = q.shape
    blocks = -(-t // block)
    rows = rearrange(q * jnp.asarray(d ** -0.5, q.dtype), "b t h k -> (b h) t k")
    rows = rearrange(jnp.pad(rows, ((0, 0), (0, blocks * block - t), (0, 0))), "r (n t) k -> r n t k", n=blocks)
    keys, values = (rearrange(x, "b h s k -> (b h) s k") for x in (k, v))

    def one_head(args):
        query_blocks, head_keys, head_values = args  # [blocks, block, K], [S, K], [S, K]

        def one_block(x):  # [block, K] -> [block, K]
            scores = jnp.einsum("tk,sk->ts", x, head_keys, preferred_element_type=_F32)
            weights = jnp.exp(scores - scores.max(-1, keepdims=True))
            out = jnp.einsum("ts,sk->tk", weights.astype(head_values.dtype), head_values,
                             preferred_element_type=_F32)
            return (out / weights.sum(-1, keepdims=True)).astype(q.dtype)

        return jax.lax.map(one_block, query_blocks)

    out = jax.lax.map(one_head, (rows, keys, values))  # [B H, blocks, block, K]
    return rearrange(out, "(b h) n t k -> b (n t) h k", b=b)[:, :t]


def _per_shard(fn, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Run `fn` on each device's rows and heads under the active mesh (as is without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v)
    q_spec, _ = fit_spec(logical_spec("batch", None, "heads", None), q.shape, mesh)
    kv_spec = jax.sharding.PartitionSpec(q_spec[0], q_spec[2], None, None)  # same rows and heads as q
    if mesh.are_all_axes_explicit:  # layouts are types there: shard_map takes them as they are
        q, k, v = (jax.sharding.reshard(x, spec) for x, spec in ((q, q_spec), (k, kv_spec), (v, kv_spec)))
    return jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec)(q, k, v)
