"""Whisper's building blocks: LayerNorm, dense maps, one attention for self and cross, one block.

Shapes use einsum letters: B batch, S attended positions, T query positions, D width, H heads,
K head dim, F MLP width. Parameters carry logical axis names (`whisper_nnx.sharding.AXES`).
Weights are stored in `param_dtype` and cast to the compute `dtype` at use; LayerNorm, softmax
and logits are computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from whisper_nnx.sharding import constrain, out_sharding, param_metadata

from .attention_kernels import attend, check_kernel, long_attention

_F32 = jnp.float32


def make_param(rngs: Optional[nnx.Rngs], shape: tuple[int, ...], names: tuple, dtype,
               init: Union[str, np.ndarray] = "normal") -> nnx.Param:
    """A parameter with logical axis `names`.

    `init` is "normal" (scale 0.02; random values only matter for random-weight tests),
    "zeros", "ones" or a fixed array. With `rngs=None` the parameter is abstract (a
    ShapeDtypeStruct): building a model that way costs no tracing and no memory, which is how
    checkpoints are loaded.
    """
    if rngs is None:
        value = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    elif isinstance(init, np.ndarray):
        value = jnp.asarray(init, dtype).reshape(shape)
    elif init in ("zeros", "ones"):
        value = (jnp.zeros if init == "zeros" else jnp.ones)(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, _F32)).astype(dtype)
    return nnx.Param(value, **param_metadata(*names))


def matmul(spec: str, x: jax.Array, w: jax.Array, dtype, out_dtype=None, **kwargs) -> jax.Array:
    """`jnp.einsum(spec, x, w)` with operands in `dtype`, accumulated in float32, result in
    `out_dtype` (default `dtype`).

    Asking for a float32 result is what puts bfloat16 operands on the CPU's native bf16 dot
    (AVX512-BF16: about 1.9x the float32 rate here); a bfloat16-result dot is computed in float32
    and gains nothing. A single row (one decode step at batch 1) is the exception: XLA's bf16
    matrix-vector path is ~10x slower than its two-row matrix path, so one row goes through as
    two. The cast back is fused into the consumer. No-op for float32.
    """
    inputs, out = spec.split("->")
    x_letters = inputs.split(",")[0]
    rows = int(np.prod([n for letter, n in zip(x_letters, x.shape) if letter in out]))
    single = rows == 1 and jnp.dtype(dtype) != jnp.dtype(_F32)
    if single:  # [1, ...] -> [2, ...]; the duplicate row is dropped from the result
        x = jnp.concatenate([x, x], axis=0)
    y = jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=_F32, **kwargs)
    if single:
        y = jax.lax.slice_in_dim(y, 0, 1, axis=out.index(x_letters[0]))
    return y.astype(out_dtype or dtype)


def write_at(cache: jax.Array, new: jax.Array, offset) -> jax.Array:
    """new [B, H, T, K] written into cache [B, H, C, K] at positions [offset, offset + T): a
    scalar offset for the whole batch, or [B], one per row (a scatter of each row's slice)."""
    if jnp.ndim(offset) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, offset, axis=2)
    return jax.vmap(lambda c, n, o: jax.lax.dynamic_update_slice_in_dim(c, n, o, axis=1))(cache, new, offset)


class LayerNorm(nnx.Module):
    """LayerNorm over D with eps 1e-5, computed in float32."""

    def __init__(self, width: int, *, dtype, param_dtype, rngs: Optional[nnx.Rngs]):
        self.scale = make_param(rngs, (width,), ("embed",), param_dtype, init="ones")
        self.bias = make_param(rngs, (width,), ("embed",), param_dtype, init="zeros")
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(_F32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + 1e-5)
        return (y * self.scale[...].astype(_F32) + self.bias[...].astype(_F32)).astype(self.dtype)


class MLP(nnx.Module):
    """D -> F -> GELU (exact erf form, as the reference) -> D."""

    def __init__(self, width: int, hidden: int, *, dtype, param_dtype, rngs: Optional[nnx.Rngs]):
        self.fc1_kernel = make_param(rngs, (width, hidden), ("embed", "mlp"), param_dtype)
        self.fc1_bias = make_param(rngs, (hidden,), ("mlp",), param_dtype)
        self.fc2_kernel = make_param(rngs, (hidden, width), ("mlp", "embed"), param_dtype)
        self.fc2_bias = make_param(rngs, (width,), ("embed",), param_dtype)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        h = matmul("btd,df->btf", x, self.fc1_kernel[...], self.dtype)
        h = jax.nn.gelu(h + self.fc1_bias[...].astype(self.dtype), approximate=False)
        y = matmul("btf,fd->btd", h, self.fc2_kernel[...], self.dtype,
                   out_sharding=out_sharding("batch", None, "embed"))
        return y + self.fc2_bias[...].astype(self.dtype)


class Attention(nnx.Module):
    """Multi-head attention; self-attention, or cross-attention over given keys/values.

    The key projection has no bias, as in every Whisper checkpoint. `attention_kernel` (one of
    `attention_kernels.KERNELS`) is the kernel of unmasked self-attention (the encoder's); it is
    a static attribute, so it is part of the graph every jitted program is traced from.
    """

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: Optional[nnx.Rngs],
                 attention_kernel: str = "auto"):
        head_dim = width // heads
        w_names, b_names = ("embed", "heads", "head_dim"), ("heads", "head_dim")
        self.query_kernel = make_param(rngs, (width, heads, head_dim), w_names, param_dtype)
        self.query_bias = make_param(rngs, (heads, head_dim), b_names, param_dtype)
        self.key_kernel = make_param(rngs, (width, heads, head_dim), w_names, param_dtype)
        self.value_kernel = make_param(rngs, (width, heads, head_dim), w_names, param_dtype)
        self.value_bias = make_param(rngs, (heads, head_dim), b_names, param_dtype)
        self.out_kernel = make_param(rngs, (heads, head_dim, width), ("heads", "head_dim", "embed"),
                                     param_dtype)
        self.out_bias = make_param(rngs, (width,), ("embed",), param_dtype)
        self.dtype = dtype
        self.attention_kernel = check_kernel(attention_kernel)

    def queries(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, H, K]."""
        y = matmul("btd,dhk->bthk", x, self.query_kernel[...], self.dtype)
        return y + self.query_bias[...].astype(self.dtype)

    def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, S, D] -> keys and values, each [B, H, S, K] (heads-major).

        The products come out positions-major and are then swapped: asked for heads-major
        directly, XLA's CPU backend multiplies transposed operands and copied every key and
        value kernel into that layout at each decode step (12 copies a step for tiny)."""
        k = matmul("bsd,dhk->bshk", x, self.key_kernel[...], self.dtype)
        v = matmul("bsd,dhk->bshk", x, self.value_kernel[...], self.dtype) + self.value_bias[...].astype(self.dtype)
        return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

    def output(self, a: jax.Array) -> jax.Array:
        """[B, T, H, K] -> [B, T, D]."""
        y = matmul("bthk,hkd->btd", a, self.out_kernel[...], self.dtype,
                   out_sharding=out_sharding("batch", None, "embed"))
        return y + self.out_bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, kv: Optional[tuple[jax.Array, jax.Array]] = None,
                 mask: Optional[jax.Array] = None, scores_out: Optional[list] = None) -> jax.Array:
        """Attention of x [B, T, D] over itself, or over `kv` (each [B, H, S, K]) -> [B, T, D].

        Unmasked self-attention (the encoder's) goes through `attention_kernels.long_attention`
        with this layer's `attention_kernel`.
        """
        if kv is None and mask is None and scores_out is None:
            return self.output(long_attention(self.queries(x), *self.keys_values(x), self.attention_kernel))
        k, v = self.keys_values(x) if kv is None else kv
        return self.output(attend(self.queries(x), k, v, mask, scores_out))


class Block(nnx.Module):
    """Pre-LayerNorm residual block: self-attention (unmasked self-attention with the
    `attention_kernel` setting), cross-attention if `has_cross`, MLP."""

    def __init__(self, width: int, heads: int, has_cross: bool, *, dtype, param_dtype,
                 rngs: Optional[nnx.Rngs], attention_kernel: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_ln = LayerNorm(width, **kw)
        self.attn = Attention(width, heads, **kw, attention_kernel=attention_kernel)
        self.cross_attn_ln = LayerNorm(width, **kw) if has_cross else None
        self.cross_attn = Attention(width, heads, **kw) if has_cross else None
        self.mlp_ln = LayerNorm(width, **kw)
        self.mlp = MLP(width, 4 * width, **kw)

    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None,
                 cross_kv: Optional[tuple[jax.Array, jax.Array]] = None,
                 cache: Optional[tuple[jax.Array, jax.Array]] = None,
                 offset: Optional[jax.Array] = None, seq_name: str = "text_len",
                 cross_scores_out: Optional[list] = None
                 ) -> tuple[jax.Array, Optional[tuple[jax.Array, jax.Array]]]:
        """x [B, T, D] -> (x [B, T, D], updated self-attention cache or None).

        With `cache` (keys, values, each [B, H, C, K]) this call's keys/values are written at
        positions [offset, offset + T) and attention runs over the whole cache under `mask`
        ([T, C], or [B, 1, T, C] with per-row padding); without it, attention runs over this
        call's own positions. `cross_scores_out` receives the cross-attention scores.
        """
        h = self.attn_ln(x)
        if cache is None:
            x = x + self.attn(h, mask=mask)
        else:
            k, v = self.attn.keys_values(h)
            cache = tuple(constrain(write_at(c, new.astype(c.dtype), offset), "batch", "heads", "cache_len",
                                    "head_dim") for c, new in zip(cache, (k, v)))
            x = x + self.attn.output(attend(self.attn.queries(h), *cache, mask))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), kv=cross_kv, scores_out=cross_scores_out)
        x = x + self.mlp(self.mlp_ln(x))
        return constrain(x, "batch", seq_name, "embed"), cache
