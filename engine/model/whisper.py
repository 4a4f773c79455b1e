"""Whisper encoder-decoder in Flax NNX, with an explicit KV cache for generation.

Shapes: B batch, M mels, N mel frames (2 S), S audio positions, T text tokens, C cache
positions, D width, V vocabulary.

    encode(mel [B, M, N])                       -> audio features [B, S, D]
    prefill(features, tokens [B, T], C, pad)    -> logits [B, T, V], KVCache
    decode_step(tokens [B, T], offset, cache, pad) -> logits [B, T, V], KVCache
    __call__(mel, tokens)                       -> logits [B, T, V]   (no cache; reference path)

Rows of one batch may carry prompts of different lengths: they are left-padded to a common
length and `pad` [B] says how many leading cache positions of each row are padding. A row's
padding is invisible to attention and its positional embeddings start at 0 after the padding,
so a padded row computes what it would alone.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from whisper_nnx.sharding import constrain

from .attention_kernels import check_kernel, default_kernel
from .config import ModelDims
from .kv_cache import KVCache
from .layers import Block, LayerNorm, make_param, matmul

# Windows per encoder call on a single CPU device (`Whisper.encoder_rows`): measured on
# benchmarks/bench_roofline.py's encoder phase (see benchmarks/RESULTS.md).
ENCODER_ROWS_CPU = 2

_F32 = jnp.float32


def _row_offsets(offset) -> jax.Array:
    """A scalar offset or one per row [B] -> [B, 1] or [1, 1] int32, to add to [., T] positions."""
    offset = jnp.asarray(offset, jnp.int32)
    return offset[:, None] if offset.ndim == 1 else offset.reshape(1, 1)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The encoder's fixed positional table [length, channels]: sin half, then cos half."""
    if channels % 2:
        raise ValueError(f"sinusoid width must be even, got {channels}")
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def _conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """x [B, N, Cin] * kernel [3, Cin, Cout] (padding 1) -> [B, N / stride, Cout]."""
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(stride,), padding=[(1, 1)],
                                     dimension_numbers=("NWC", "WIO", "NWC"), preferred_element_type=_F32)
    return y.astype(x.dtype) + bias  # float32 accumulation: the native bf16 path (layers.matmul)


class AudioEncoder(nnx.Module):
    """Two convolutions (the second with stride 2), sinusoidal positions, pre-LN blocks whose
    self-attention uses the `attention_kernel` setting."""

    def __init__(self, dims: ModelDims, *, dtype, param_dtype, rngs: Optional[nnx.Rngs],
                 attention_kernel: str = "auto"):
        d, m = dims.n_audio_state, dims.n_mels
        self.conv1_kernel = make_param(rngs, (3, m, d), ("conv_width", "mel", "embed"), param_dtype)
        self.conv1_bias = make_param(rngs, (d,), ("embed",), param_dtype)
        self.conv2_kernel = make_param(rngs, (3, d, d), ("conv_width", "conv_in", "embed"), param_dtype)
        self.conv2_bias = make_param(rngs, (d,), ("embed",), param_dtype)
        self.positions = make_param(rngs, (dims.n_audio_ctx, d), ("audio_pos", "embed"), param_dtype,
                                    init=sinusoids(dims.n_audio_ctx, d))
        self.blocks = nnx.List([Block(d, dims.n_audio_head, False, dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs, attention_kernel=attention_kernel)
                                for _ in range(dims.n_audio_layer)])
        self.ln_post = LayerNorm(d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, mel: jax.Array) -> jax.Array:
        """mel [B, M, N] -> [B, N / 2, D]."""
        x = jnp.swapaxes(mel, 1, 2).astype(self.dtype)
        x = jax.nn.gelu(_conv1d(x, self.conv1_kernel[...].astype(self.dtype),
                                self.conv1_bias[...].astype(self.dtype), 1), approximate=False)
        x = jax.nn.gelu(_conv1d(x, self.conv2_kernel[...].astype(self.dtype),
                                self.conv2_bias[...].astype(self.dtype), 2), approximate=False)
        positions = self.positions[...]
        if x.shape[1] > positions.shape[0]:
            raise ValueError(f"{x.shape[1]} audio positions exceed the model's {positions.shape[0]}")
        x = constrain(x + positions[: x.shape[1]].astype(self.dtype), "batch", "audio_len", "embed")
        for block in self.blocks:
            x, _ = block(x, seq_name="audio_len")
        return self.ln_post(x)


class TextDecoder(nnx.Module):
    """Token + learned positional embeddings, pre-LN blocks with cross-attention, tied logits."""

    def __init__(self, dims: ModelDims, *, dtype, param_dtype, rngs: Optional[nnx.Rngs]):
        d = dims.n_text_state
        self.token_embedding = make_param(rngs, (dims.n_vocab_padded, d), ("vocab", "embed"), param_dtype)
        self.n_vocab = dims.n_vocab
        self.positions = make_param(rngs, (dims.n_text_ctx, d), ("text_pos", "embed"), param_dtype)
        self.blocks = nnx.List([Block(d, dims.n_text_head, True, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
                                for _ in range(dims.n_text_layer)])
        self.ln = LayerNorm(d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype

    def _embed(self, tokens: jax.Array, offset, pad: Optional[jax.Array] = None) -> jax.Array:
        """tokens [B, T] at cache positions offset.. (minus each row's `pad` [B]) -> [B, T, D]."""
        table = self.token_embedding[...].astype(self.dtype)
        if pad is None and jnp.ndim(offset) == 0:
            positions = jax.lax.dynamic_slice_in_dim(self.positions[...], offset, tokens.shape[1])
        else:  # [B, T, D]; padding positions (negative) and ones past the table are clamped
            pad = jnp.zeros((tokens.shape[0],), jnp.int32) if pad is None else pad
            index = _row_offsets(offset) + jnp.arange(tokens.shape[1])[None, :] - pad[:, None]
            positions = jnp.take(self.positions[...], jnp.clip(index, 0, self.positions.shape[0] - 1), axis=0)
        x = jnp.take(table, tokens, axis=0) + positions.astype(self.dtype)
        return constrain(x, "batch", "text_len", "embed")

    def _logits(self, x: jax.Array) -> jax.Array:
        """Final LayerNorm and the output projection tied to the embedding: -> [B, T, V] f32
        (the padding rows of the table are cut off)."""
        x = self.ln(x)
        logits = matmul("btd,vd->btv", x, self.token_embedding[...], self.dtype, out_dtype=_F32)
        return constrain(logits[..., :self.n_vocab], "batch", "text_len", None)

    def cross_kv(self, audio_features: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Per-layer cross-attention keys/values of the encoder output, each [B, H, S, K]."""
        x = audio_features.astype(self.dtype)
        return [block.cross_attn.keys_values(x) for block in self.blocks]

    def __call__(self, tokens: jax.Array, audio_features: jax.Array,
                 cross_scores_out: Optional[list] = None) -> jax.Array:
        """Causal forward over all of tokens [B, T] with no cache -> logits [B, T, V].
        `cross_scores_out` receives each layer's cross-attention scores [B, H, T, S]."""
        x = self._embed(tokens, 0)
        causal = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))
        for block, kv in zip(self.blocks, self.cross_kv(audio_features)):
            x, _ = block(x, mask=causal, cross_kv=kv, cross_scores_out=cross_scores_out)
        return self._logits(x)

    def step(self, tokens: jax.Array, offset: jax.Array, cache: KVCache,
             pad: Optional[jax.Array] = None) -> tuple[jax.Array, KVCache]:
        """tokens [B, T] at cache positions [offset, offset + T) against the cache -> logits,
        cache. `offset`: a scalar shared by the batch, or [B], each row's own (continuous
        batching: rows at different lengths). `pad` [B]: leading cache positions of each row
        that hold padding (None: 0)."""
        x = self._embed(tokens, offset, pad)
        keys = jnp.arange(cache.length)
        if jnp.ndim(offset) == 0:
            query_pos = offset + jnp.arange(tokens.shape[1])
            visible = keys[None, :] <= query_pos[:, None]  # [T, C]
            if pad is not None:  # [B, 1, T, C], broadcast over heads
                visible = (visible[None] & (keys[None, None, :] >= pad[:, None, None]))[:, None]
        else:  # [B, 1, T, C]
            query_pos = _row_offsets(offset) + jnp.arange(tokens.shape[1])[None, :]  # [B, T]
            visible = keys[None, None, :] <= query_pos[:, :, None]
            if pad is not None:
                visible = visible & (keys[None, None, :] >= pad[:, None, None])
            visible = visible[:, None]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block(x, mask=visible, cross_kv=(cache.cross_k[i], cache.cross_v[i]),
                              cache=(cache.self_k[i], cache.self_v[i]), offset=offset)
            new_k.append(k)
            new_v.append(v)
        return self._logits(x), cache._replace(self_k=tuple(new_k), self_v=tuple(new_v))


class Whisper(nnx.Module):
    """The full model. Build with `build_model` (random) or `weights.load_model` (checkpoint);
    `rngs=None` gives an abstract model (shapes and logical names only).

    `attention_kernel` (one of `attention_kernels.KERNELS`) chooses the encoder's
    self-attention kernel; None takes `attention_kernels.default_kernel()` (the
    `WHISPER_NNX_ATTENTION` environment variable, else "auto"), read here, once.
    `encoder_rows`: at most this many windows go through the encoder together, larger batches
    in groups one after another (a CPU then keeps a group's activations in its caches); 0: the
    whole batch at once; None: `ENCODER_ROWS_CPU` on a single CPU device, else 0. The settings
    are static attributes of the model, so they travel in its graph (`nnx.split`) to every
    program traced from it, `Generator`'s included.
    """

    def __init__(self, dims: ModelDims, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: Optional[nnx.Rngs], attention_kernel: Optional[str] = None,
                 encoder_rows: Optional[int] = None):
        self.dims = dims
        self.attention_kernel = default_kernel() if attention_kernel is None else check_kernel(attention_kernel)
        if encoder_rows is not None and encoder_rows < 0:
            raise ValueError(f"encoder_rows must be >= 0 or None, got {encoder_rows}")
        self.encoder_rows = encoder_rows
        self.encoder = AudioEncoder(dims, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                    attention_kernel=self.attention_kernel)
        self.decoder = TextDecoder(dims, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def encode(self, mel: jax.Array) -> jax.Array:
        """mel [B, M, N] -> audio features [B, S, D], `encoder_rows` windows at a time."""
        rows, batch = encoder_group(self.encoder_rows, mel.shape[0]), mel.shape[0]
        if rows == batch:
            return self.encoder(mel)
        out = jax.lax.map(self.encoder, mel.reshape(batch // rows, rows, *mel.shape[1:]))
        return out.reshape(batch, *out.shape[2:])

    def prefill(self, audio_features: jax.Array, tokens: jax.Array, cache_length: int,
                pad: Optional[jax.Array] = None) -> tuple[jax.Array, KVCache]:
        """Cross K/V once, a zeroed self cache of `cache_length`, then tokens [B, T] at 0
        (left-padded by `pad` [B] positions per row, None: no padding)."""
        cache = KVCache.allocate(self.decoder.cross_kv(audio_features), cache_length)
        return self.decoder.step(tokens, jnp.int32(0), cache, pad)

    def decode_step(self, tokens: jax.Array, offset: jax.Array, cache: KVCache,
                    pad: Optional[jax.Array] = None) -> tuple[jax.Array, KVCache]:
        """tokens [B, T] written at `offset` (a traced int32 scalar, or [B]: each row's) -> logits
        [B, T, V], cache."""
        return self.decoder.step(tokens, offset, cache, pad)

    def __call__(self, mel: jax.Array, tokens: jax.Array) -> jax.Array:
        """Uncached forward: mel [B, M, N], tokens [B, T] -> logits [B, T, V] float32."""
        return self.decoder(tokens, self.encoder(mel))


def encoder_group(setting: Optional[int], batch: int) -> int:
    """Windows per encoder call for a batch of `batch` under the `encoder_rows` setting: the
    largest divisor of `batch` not above the setting (the whole batch for 0, and under a mesh of
    several devices, where the batch axis is sharded)."""
    if setting is None:
        mesh = jax.sharding.get_abstract_mesh()
        single = mesh.empty or mesh.size == 1
        setting = ENCODER_ROWS_CPU if single and jax.default_backend() == "cpu" else 0
    if setting == 0 or batch <= setting:
        return batch
    return max(d for d in range(1, setting + 1) if batch % d == 0)


def build_model(dims: ModelDims, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32,
                attention_kernel: Optional[str] = None, encoder_rows: Optional[int] = None) -> Whisper:
    """A randomly initialised, unsharded model (tests, benchmarks of random large dims);
    `attention_kernel` and `encoder_rows` as in `Whisper`."""
    with nnx.use_eager_sharding(False):
        return Whisper(dims, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed),
                       attention_kernel=attention_kernel, encoder_rows=encoder_rows)
