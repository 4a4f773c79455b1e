"""FLOPs of one 30 s window, counted by hand from `ModelDims`: encoder, cross-attention keys and
values, decoder prefill and decode steps. Pure Python (no JAX): a roofline needs the work, not
the arrays.

Letters: S audio positions (1500), N mel frames (2 S), M mels, D width, H heads, F = 4 D MLP
width, L layers, V vocabulary, P prompt tokens, A self-attention positions a query sees.

Counted: every matrix product, a multiply-add as 2 FLOPs, so x [m, k] @ w [k, n] costs 2 m k n:
  encoder   conv1 (k = 3, M -> D over N frames)       2 N 3 M D
            conv2 (k = 3, D -> D, stride 2, S outputs) 2 S 3 D D
            per block: q, k, v, out projections        4 * 2 S D^2
                       scores Q K^T and probs V        2 * 2 S S D   (summed over heads: H K = D)
                       MLP D -> F -> D                 2 * 2 S D F = 16 S D^2
  cross K/V per decoder block, once per window         2 * 2 S D^2
  decoder token (per block): self q, k, v, out         4 * 2 D^2
                             self scores, probs V      2 * 2 A D
                             cross q, out              2 * 2 D^2
                             cross scores, probs V     2 * 2 S D
                             MLP                       16 D^2
            logits (tied embedding)                    2 D V
  so a block costs 24 S D^2 + 4 S^2 D in the encoder and 28 D^2 + 4 D (A + S) per decoder token.

Not counted (elementwise, O(S D + H S^2) against the O(S D^2 + S^2 D) above): bias and residual
adds, LayerNorm, softmax, the attention scale and mask, GELU, positional adds, embedding
gathers, argmax. XLA's cost analysis counts them (about 1 FLOP per element per operation,
softmax's exp and GELU's erf as "transcendentals"); tests/test_flops.py compares the two.

What "useful" means here: decoder self-attention counts the A = position + 1 keys a causal
query can see, and logits count the checkpoint's V (51864..51866). The engine does a bit more:
its jitted step attends over the whole allocated cache C under a mask (pass `cache_length=C` to
count that), its prefill returns logits for all P prompt positions (counted: P is 1..4), and its
embedding table has V rounded up to a multiple of 128 (+0.2 %, not counted).

Per window, P = 3, 224 decode steps, useful count (GFLOP; `flops_table()` reproduces it):

| model | encoder | cross K/V | prefill | 224 steps | step (mean) | window |
|---|---:|---:|---:|---:|---:|---:|
| tiny.en | 36.9 | 3.5 | 0.20 | 14.8 | 0.066 | 55.5 |
| base.en | 87.4 | 9.4 | 0.35 | 26.2 | 0.117 | 123.4 |
| small.en | 344.2 | 42.5 | 1.00 | 75.6 | 0.337 | 463.2 |
| medium.en | 1138.1 | 151.0 | 2.88 | 217.2 | 0.970 | 1509.1 |
| large-v3 | 2273.8 | 314.6 | 5.54 | 417.9 | 1.865 | 3011.7 |
| large-v3-turbo | 2273.8 | 39.3 | 1.04 | 78.3 | 0.349 | 2392.4 |
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from .config import DIMS, ModelDims

CONV_WIDTH = 3  # both encoder convolutions have kernel width 3
MLP_RATIO = 4  # F = 4 D in every Whisper block
TABLE_MODELS = ("tiny.en", "base.en", "small.en", "medium.en", "large-v3", "large-v3-turbo")


def _positions(dims: ModelDims, audio_positions: Optional[int]) -> int:
    s = dims.n_audio_ctx if audio_positions is None else audio_positions
    if not 0 < s <= dims.n_audio_ctx:
        raise ValueError(f"audio_positions={s} is outside 1..{dims.n_audio_ctx}")
    return s


def encoder_parts(dims: ModelDims, audio_positions: Optional[int] = None) -> dict[str, int]:
    """Encoder FLOPs of one window by kind: conv, projections (q, k, v, out), attention (scores
    and probs V), mlp. `audio_positions` S (default n_audio_ctx) comes from N = 2 S mel frames."""
    s, d, m, layers = _positions(dims, audio_positions), dims.n_audio_state, dims.n_mels, dims.n_audio_layer
    conv1 = 2 * (2 * s) * CONV_WIDTH * m * d
    conv2 = 2 * s * CONV_WIDTH * d * d
    return {"conv": conv1 + conv2,
            "projections": layers * 4 * 2 * s * d * d,
            "attention": layers * 2 * 2 * s * s * d,
            "mlp": layers * 2 * 2 * s * d * (MLP_RATIO * d)}


def encoder_flops(dims: ModelDims, audio_positions: Optional[int] = None) -> int:
    """Matmul FLOPs of the encoder on one window (one row of the batch)."""
    return sum(encoder_parts(dims, audio_positions).values())


def cross_kv_flops(dims: ModelDims, audio_positions: Optional[int] = None) -> int:
    """Cross-attention keys and values of every decoder block from the S encoder outputs, computed
    once per window at prefill: L * 2 * 2 S D_audio D_text."""
    s = _positions(dims, audio_positions)
    return dims.n_text_layer * 2 * 2 * s * dims.n_audio_state * dims.n_text_state


def token_flops(dims: ModelDims, attended: int, audio_positions: Optional[int] = None,
                logits: bool = True) -> int:
    """Decoder FLOPs of one token whose self-attention sees `attended` cache positions (its own
    included), cross-attending S audio positions; with `logits`, its 2 D V output projection."""
    if attended < 1:
        raise ValueError(f"a token attends at least itself, got attended={attended}")
    s, d = _positions(dims, audio_positions), dims.n_text_state
    per_block = (4 * 2 * d * d  # self q, k, v, out
                 + 2 * 2 * attended * d  # self scores, probs V
                 + 2 * 2 * d * d  # cross q, out (its K/V come from the cache)
                 + 2 * 2 * s * d  # cross scores, probs V
                 + 2 * 2 * d * MLP_RATIO * d)  # MLP
    return dims.n_text_layer * per_block + (2 * d * dims.n_vocab if logits else 0)


def _check_length(dims: ModelDims, tokens: int, cache_length: Optional[int]) -> None:
    if cache_length is not None and cache_length < tokens:
        raise ValueError(f"cache_length={cache_length} holds fewer than the {tokens} tokens written")
    if max(tokens, cache_length or 0) > dims.n_text_ctx:
        raise ValueError(f"{max(tokens, cache_length or 0)} positions exceed n_text_ctx={dims.n_text_ctx}")


def prefill_flops(dims: ModelDims, prompt: int, audio_positions: Optional[int] = None,
                  cache_length: Optional[int] = None) -> int:
    """The P prompt tokens in one call (cross K/V not included; see `cross_kv_flops`): prompt
    token i sees i + 1 positions (all `cache_length` when given), logits for every position."""
    if prompt < 1:
        raise ValueError(f"prompt must hold at least one token, got {prompt}")
    _check_length(dims, prompt, cache_length)
    return sum(token_flops(dims, cache_length or i + 1, audio_positions) for i in range(prompt))


def decoder_flops(dims: ModelDims, steps: int, prompt: int = 3, audio_positions: Optional[int] = None,
                  cache_length: Optional[int] = None) -> int:
    """Prefill of `prompt` tokens, then `steps` single-token steps, the one at cache position
    P + j seeing P + j + 1 positions (all `cache_length` when given; the engine's jitted step
    attends over its whole cache). Cross K/V not included. Sampling n tokens takes n - 1 steps:
    the prefill's logits give the first."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_length(dims, prompt + steps, cache_length)
    decode = sum(token_flops(dims, cache_length or prompt + j + 1, audio_positions) for j in range(steps))
    return prefill_flops(dims, prompt, audio_positions, cache_length) + decode


@dataclasses.dataclass(frozen=True)
class WindowFlops:
    """FLOPs of one 30 s window of one batch row, split by phase."""

    encoder: int  # the encoder on N = 2 S mel frames
    cross_kv: int  # every decoder block's cross K/V, once per window
    prefill: int  # the prompt's tokens, logits included
    decode: int  # all `steps` single-token steps
    prompt: int  # P
    steps: int

    @property
    def per_step(self) -> float:
        """Mean FLOPs of one decode step (steps grow by 4 L D per step with the cache)."""
        return self.decode / self.steps if self.steps else 0.0

    @property
    def decoder(self) -> int:
        """Everything after the encoder: cross K/V + prefill + steps."""
        return self.cross_kv + self.prefill + self.decode

    @property
    def total(self) -> int:
        return self.encoder + self.decoder


def window_flops(dims: ModelDims, steps: int = 224, prompt: int = 3, audio_positions: Optional[int] = None,
                 cache_length: Optional[int] = None) -> WindowFlops:
    """Per-phase FLOPs of one window: encoder, cross K/V, prefill of `prompt`, `steps` steps."""
    _check_length(dims, prompt + steps, cache_length)
    prefill = prefill_flops(dims, prompt, audio_positions, cache_length)
    return WindowFlops(encoder=encoder_flops(dims, audio_positions),
                       cross_kv=cross_kv_flops(dims, audio_positions), prefill=prefill,
                       decode=decoder_flops(dims, steps, prompt, audio_positions, cache_length) - prefill,
                       prompt=prompt, steps=steps)


def flops_table(names: Sequence[str] = TABLE_MODELS, steps: int = 224, prompt: int = 3) -> str:
    """Markdown table of `window_flops` in GFLOP for the named presets (the module docstring's)."""
    lines = [f"| model | encoder | cross K/V | prefill | {steps} steps | step (mean) | window |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        w = window_flops(DIMS[name], steps, prompt)
        g = [x / 1e9 for x in (w.encoder, w.cross_kv, w.prefill, w.decode, w.per_step, w.total)]
        lines.append(f"| {name} | {g[0]:.1f} | {g[1]:.1f} | {g[2]:.2f} | {g[3]:.1f} | {g[4]:.3f} | {g[5]:.1f} |")
    return "\n".join(lines)


def step_bytes(dims: ModelDims, batch: int, attended: int, bytes_per_value: int = 4,
               audio_positions: Optional[int] = None) -> int:
    """Bytes one greedy decode step of `batch` rows must read from memory, each query seeing
    `attended` self-attention positions: the memory-traffic floor of a step (over a measured
    bandwidth, its shortest possible time). Counted, in `bytes_per_value` each:

      decoder block weights   L (4 D^2 + 2 D^2 + 2 D F)  self q, k, v, out; cross q, out; MLP
                                                         (cross k, v act once per window, not per step)
      vocabulary table        V D                        the tied logits read all of it
      cross-attention K, V    batch * L * 2 S D          per row: its own window's keys and values
      self-attention K, V     batch * L * 2 A D

    Not counted (each under 0.5 % for tiny at batch 1): biases, LayerNorms, the B rows of the
    embedding and positional tables, activations, logits written.
    """
    d, layers = dims.n_text_state, dims.n_text_layer
    weights = layers * (6 * d * d + 2 * d * MLP_RATIO * d) + dims.n_vocab * d
    per_row = layers * 2 * d * (_positions(dims, audio_positions) + attended)
    return bytes_per_value * (weights + batch * per_row)

