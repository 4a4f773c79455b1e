"""Weight-only int8 quantization of a loaded Whisper (per-output-channel, symmetric).

Each selected weight W is stored as int8 values Q (same shape as W) and a float32 scale s per
output channel: s = max |W| over the contracted (input) axes / 127, Q = round(W / s), so
|W - s Q| <= s / 2 element-wise. Activations, biases, LayerNorms, positional tables and the
KV cache stay in floating point.

The quantized weight sits inside the model's own `nnx.Param` as an `Int8Weight` pytree. The
layers read every weight as `param[...]`, which on an `Int8Weight` returns the dequantized
array, so the model code needs no change and `nnx.split` / `jax.jit` / `nnx.merge` carry
the int8 values and scales as ordinary leaves. XLA dequantizes inside the jitted programs;
no kernel multiplies int8 directly, so what this buys is weight memory (about 4x smaller for
the quantized weights), not arithmetic.

    model = quantize_weights(load_model(checkpoint))   # a new model; the input is unchanged
    weight_bytes(model)                                 # bytes the weights occupy

Parameters quantized by default (einsum letters as in `layers.py`; the scale keeps every axis,
with size 1 on the contracted ones):

    attention query/key/value_kernel [D, H, K]  scale [1, H, K]
    attention out_kernel             [H, K, D]  scale [1, 1, D]
    MLP fc1_kernel [D, F], fc2_kernel [F, D]    scale [1, F], [1, D]
    decoder token_embedding          [V, D]     scale [V, 1]  (one scale per token row: the
                                                row is an output channel of the tied logits)
    encoder conv1/conv2_kernel  [3, Cin, D]     scale [1, 1, D]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Collection

import jax
import jax.numpy as jnp
from flax import nnx

from .whisper import Whisper

_F32 = jnp.float32
INT8_MAX = 127  # symmetric range [-127, 127]: -128 is never produced

# parameter name -> the axes it contracts over (reduced to one scale per remaining index)
CONTRACTED_AXES: dict[str, tuple[int, ...]] = {
    "query_kernel": (0,),
    "key_kernel": (0,),
    "value_kernel": (0,),
    "out_kernel": (0, 1),
    "fc1_kernel": (0,),
    "fc2_kernel": (0,),
    "token_embedding": (1,),
    "conv1_kernel": (0, 1),
    "conv2_kernel": (0, 1),
}
MODES = ("int8",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Int8Weight:
    """A weight as int8 `values` and float32 per-channel `scale`; indexing dequantizes.

    `values` has the weight's shape; `scale` the same rank with size 1 on the contracted axes.
    `dtype` (static) is the dtype the float weight had, which indexing returns.
    """

    values: jax.Array
    scale: jax.Array
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.scale.nbytes)

    def dequantize(self) -> jax.Array:
        """values * scale in `dtype`, the weight's shape."""
        return (self.values.astype(_F32) * self.scale).astype(self.dtype)

    def __getitem__(self, key) -> jax.Array:
        # `param[...]` in the layers lands here: the dequantized weight (or a slice of it).
        return self.dequantize()[key]


@functools.partial(jax.jit, static_argnames=("axes",))
def _quantize(weight: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """weight -> (int8 values [weight shape], float32 scale [weight shape, 1 on `axes`])."""
    w = weight.astype(_F32)
    peak = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    scale = jnp.where(peak > 0, peak / INT8_MAX, 1.0)  # an all-zero channel stays exactly zero
    values = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return values, scale


def quantize_array(weight: jax.Array, axes: tuple[int, ...]) -> Int8Weight:
    """One weight -> Int8Weight with one scale per index of the axes not in `axes`."""
    axes = tuple(sorted(a % weight.ndim for a in axes))
    values, scale = _quantize(weight, axes)
    return Int8Weight(values, scale, jnp.dtype(weight.dtype))


def quantize_weights(model: Whisper, mode: str = "int8",
                     names: Collection[str] = tuple(CONTRACTED_AXES)) -> Whisper:
    """A copy of `model` whose weights called one of `names` are int8 (see the module doc).

    `names` selects from `CONTRACTED_AXES` (e.g. leave out "token_embedding" to keep the tied
    embedding in float). Weights already quantized are left as they are. The returned model
    runs through `Generator` / `Transcriber` machinery unchanged; `weights.model_params` and
    checkpoint saving expect float weights and do not take it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unknown = set(names) - set(CONTRACTED_AXES)
    if unknown:
        raise ValueError(f"no quantization rule for {sorted(unknown)}; known: {sorted(CONTRACTED_AXES)}")
    graphdef, state = nnx.split(model)

    def convert(path, variable):
        name = path[-1].key
        if name not in names or not isinstance(variable, nnx.Param) or \
                isinstance(variable.get_value(), Int8Weight):
            return variable
        return variable.replace(quantize_array(variable.get_value(), CONTRACTED_AXES[name]))

    state = jax.tree_util.tree_map_with_path(convert, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def weight_bytes(model: nnx.Module) -> int:
    """Bytes of every array in the model's state (int8 values and scales included)."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(nnx.state(model)))


def quantized_names(model: nnx.Module) -> list[str]:
    """'/'-joined paths of the model's Int8Weight parameters."""
    flat = jax.tree_util.tree_flatten_with_path(
        nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, variable in flat if isinstance(variable.get_value(), Int8Weight)]
