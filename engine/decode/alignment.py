"""Word alignment on device: where in the audio each decoded token was heard.

The reference (`whisper/timing.py`) runs the decoder over [start sequence, <|notimestamps|>,
text tokens, <|endoftext|>] and reads the cross-attention of a few "alignment heads". Per
window this module computes, batched and on device, what its dynamic time warping consumes:

    scores of the alignment heads [B, A, T, S] -> softmax over the window's first
    audio_frames // 2 positions -> standardised over the tokens -> median filter (width 7,
    reflect padding at the window's own end) along the audio -> mean over heads: [B, T, S]

and the probability of each token under the same forward pass. Rows are padded: `lengths`
[B] says how many tokens each row has and `audio_frames` [B] how many mel frames of its window
hold audio. The host crops each row and runs the DTW (`words.py`).

Shapes: B windows, T tokens, S audio positions (1500), A alignment heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MEDIAN_FILTER_WIDTH = 7


def default_alignment_heads(n_text_layer: int, n_text_head: int) -> tuple[tuple[int, int], ...]:
    """Every head of the upper half of the decoder: the reference's choice for checkpoints
    that do not name their alignment heads."""
    return tuple((layer, head) for layer in range(n_text_layer // 2, n_text_layer) for head in range(n_text_head))


def _standardise_over_tokens(weights: jax.Array, token_valid: jax.Array) -> jax.Array:
    """(w - mean) / std over the token axis, counting only valid tokens (std without Bessel)."""
    count = jnp.maximum(token_valid.sum(axis=-2, keepdims=True), 1)
    mean = jnp.where(token_valid, weights, 0.0).sum(axis=-2, keepdims=True) / count
    var = jnp.where(token_valid, (weights - mean) ** 2, 0.0).sum(axis=-2, keepdims=True) / count
    return (weights - mean) / jnp.sqrt(var)


def _median_filter(weights: jax.Array, positions: jax.Array, width: int) -> jax.Array:
    """Median over a sliding window of `width` along S, mirrored at 0 and at each row's
    `positions` [B] (numpy's/torch's "reflect", the edge itself not repeated)."""
    size = weights.shape[-1]
    last = (positions - 1)[:, None]  # [B, 1]
    shifted = []
    for offset in range(-(width // 2), width // 2 + 1):
        index = jnp.arange(size)[None, :] + offset  # [B?, S]
        index = jnp.abs(index)  # reflect at 0
        index = jnp.where(index > last, 2 * last - index, index)  # reflect at the row's end
        index = jnp.clip(index, 0, size - 1)
        shifted.append(jnp.take_along_axis(weights, index[:, None, None, :], axis=-1))
    return jnp.sort(jnp.stack(shifted), axis=0)[width // 2]


def alignment_matrix(scores: list[jax.Array], logits: jax.Array, tokens: jax.Array, lengths: jax.Array,
                     audio_frames: jax.Array, heads: tuple[tuple[int, int], ...], eot: int,
                     width: int = MEDIAN_FILTER_WIDTH) -> tuple[jax.Array, jax.Array]:
    """Per-layer cross-attention scores [B, H, T, S] and logits [B, T, V] of the forward pass
    over tokens [B, T] -> (matrix [B, T, S], probs [B, T]); probs[b, t] is the probability of
    tokens[b, t + 1] among the text tokens (ids below <|endoftext|>)."""
    weights = jnp.stack([scores[layer][:, head] for layer, head in heads], axis=1)  # [B, A, T, S]
    positions = jnp.maximum(audio_frames // 2, 1)
    audio_valid = jnp.arange(weights.shape[-1])[None, None, None, :] < positions[:, None, None, None]
    weights = jax.nn.softmax(jnp.where(audio_valid, weights, -jnp.inf), axis=-1)
    token_valid = (jnp.arange(weights.shape[-2]) < lengths[:, None])[:, None, :, None]
    weights = _standardise_over_tokens(weights, token_valid)
    weights = jnp.where(audio_valid & token_valid, weights, 0.0)
    if width > 1:
        weights = _median_filter(weights, positions, width)
    matrix = weights.mean(axis=1)
    logprobs = jax.nn.log_softmax(logits[..., :eot], axis=-1)
    following = jnp.clip(tokens[:, 1:], 0, eot - 1)
    probs = jnp.exp(jnp.take_along_axis(logprobs[:, :-1], following[..., None], axis=-1)[..., 0])
    return matrix, jnp.pad(probs, ((0, 0), (0, 1)))
