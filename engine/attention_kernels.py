"""Kernels for the encoder's long self-attention (1500 audio positions attend to 1500).

The plain formulation (`layers.attend`) materialises float32 scores [B, H, 1500, 1500], runs a
softmax over them in memory and contracts again: on a CPU that pass over 54 MB per head and
window dominated the encoder (it ran at a third of the speed of the rest). Choices:

- `tiled`: per (row, head), queries in blocks of `QUERY_BLOCK`; each block's scores stay in
  cache, the softmax is normalised after the probs-values product. Under a mesh it runs per
  shard (`jax.shard_map` over the batch and head axes), so no device gathers another's rows.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, the fused flash kernel on
  NVIDIA GPUs (bfloat16/float16 only).
- `dense`: `layers.attend`, what XLA fuses well on TPU and GPU in float32.

`auto` (the default) picks tiled on CPU, cudnn on GPU for 16-bit compute, dense otherwise.
`WHISPER_NNX_ATTENTION` or `set_implementation` overrides it; the choice is read when a
function is traced, so set it before the first call.

Shapes: q [B, T, H, K], k and v heads-major [B, H, S, K] -> [B, T, H, K].
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from whisper_nnx.sharding.constraints import fit_spec, logical_spec

IMPLEMENTATIONS = ("auto", "dense", "tiled", "cudnn")
QUERY_BLOCK = 750  # two blocks per 30 s window; 500..1500 measured within 10% on CPU
_F32 = jnp.float32
_state = {"implementation": os.environ.get("WHISPER_NNX_ATTENTION", "auto")}


def set_implementation(name: str) -> None:
    """Choose the long-attention kernel for functions traced from now on."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; choose from {IMPLEMENTATIONS}")
    _state["implementation"] = name


def resolve_implementation(dtype, backend: str | None = None) -> str:
    """The kernel `auto` (or the configured choice) means for `dtype` on `backend`."""
    name = _state["implementation"]
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"WHISPER_NNX_ATTENTION={name!r}: choose from {IMPLEMENTATIONS}")
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "tiled"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "dense"


def long_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Unmasked attention of q [B, T, H, K] over k, v [B, H, S, K] -> [B, T, H, K]."""
    name = resolve_implementation(q.dtype)
    if name == "dense":
        from .layers import attend
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
    rows = jnp.swapaxes(q * jnp.asarray(d ** -0.5, q.dtype), 1, 2).reshape(b * h, t, d)
    rows = jnp.pad(rows, ((0, 0), (0, blocks * block - t), (0, 0))).reshape(b * h, blocks, block, d)
    keys, values = k.reshape(b * h, -1, d), v.reshape(b * h, -1, d)

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
    return jnp.swapaxes(out.reshape(b, h, blocks * block, d)[:, :, :t], 1, 2)


def _per_shard(kernel, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Run `kernel` on each device's rows and heads under the active mesh (as is without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v)
    q_spec, _ = fit_spec(logical_spec("batch", None, "heads", None), q.shape, mesh)
    kv_spec = jax.sharding.PartitionSpec(q_spec[0], q_spec[2], None, None)  # same rows and heads as q
    if mesh.are_all_axes_explicit:  # layouts are types there: shard_map takes them as they are
        q, k, v = (jax.sharding.reshard(x, spec) for x, spec in ((q, q_spec), (k, kv_spec), (v, kv_spec)))
    return jax.shard_map(kernel, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec)(q, k, v)
