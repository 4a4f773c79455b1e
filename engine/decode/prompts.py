"""A window's prompt: the tokens a decode starts from, and a batch's prompts side by side.

- `initial_tokens`: [<|startofprev|> [hotwords] previous text] + start sequence (+ prefix), as
  the reference builds a window's prompt (longform.py for each window, transcribe.py for clips);
- `PromptBatch`: the prompts of one batch of windows, left-padded to a bucketed width, with each
  row's pad, length limit, <|startoftranscript|> position and seed (`generate.RowSpec`) for the
  decode programs (`window_decoder.WindowDecoder`).

Shapes: B windows, P prompt tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from whisper_nnx.sharding import multihost

from .generate import RowSpec
from .options import DecodeOptions
from .tokenizer import Tokenizer

_FROM_OPTIONS = object()  # initial_tokens: take the prompt / prefix from the options


def initial_tokens(tokenizer: Tokenizer, options: DecodeOptions, n_text_ctx: int, *,
                   prompt=_FROM_OPTIONS, prefix=_FROM_OPTIONS) -> list[int]:
    """[<|startofprev|> [hotwords] prompt] + start sequence [+ <|notimestamps|>] [+ prefix], as
    the reference. A window's own `prompt` (previous text) and `prefix` are arguments (text,
    token ids or None); left out, they are the options' (one window, as whisper.decode)."""
    prompt = options.prompts.prompt if prompt is _FROM_OPTIONS else prompt
    prefix = options.prompts.prefix if prefix is _FROM_OPTIONS else prefix
    tokens = list(tokenizer.sot_sequence_including_notimestamps if options.rules.without_timestamps
                  else tokenizer.sot_sequence)

    def encoded(text_or_ids) -> list[int]:
        return tokenizer.encode(" " + text_or_ids.strip()) if isinstance(text_or_ids, str) else list(text_or_ids)

    if prefix:
        tokens += encoded(prefix)
    # Hotwords (faster-whisper's option) lead the prompt when there is no prefix; the previous
    # text fills what is left of the half context the prompt may take.
    hotwords = options.prompts.hotwords
    hot = encoded(hotwords)[:n_text_ctx // 2 - 1] if hotwords and not prefix else []
    room = n_text_ctx // 2 - 1 - len(hot)
    previous = encoded(prompt)[-room:] if prompt and room > 0 else []
    if hot or previous:
        tokens = [tokenizer.sot_prev] + hot + previous + tokens
    return tokens


_PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256)


def prompt_bucket(length: int) -> int:
    """The padded prompt width of a batch whose longest prompt has `length` tokens: the
    program is compiled once per bucket, whatever the exact lengths (a file decoded alone
    meets a new length at almost every window)."""
    return next((b for b in _PROMPT_BUCKETS if b >= length), length)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Per-row prompts of one batch, left-padded to a common length (one compiled program per
    length bucket, not per length)."""

    tokens: np.ndarray  # [B, P] int32
    rows: RowSpec  # pad [B], limit [B], sot [B], seed [B] (numpy)

    @classmethod
    def build(cls, prompts: Sequence[Sequence[int]], sot: int, filler: int, sample_len: int,
              n_text_ctx: int, width: int = 0, seeds: Optional[Sequence[int]] = None) -> "PromptBatch":
        """Rows left-padded to at least `width`. Under several processes the width is agreed
        on, since every process must call the same program. `seeds`: each row's random stream
        (default: its position)."""
        lengths = [len(p) for p in prompts]
        longest = prompt_bucket(max(lengths, default=width))
        width = multihost.global_max(max(width, longest))
        tokens = np.full((len(prompts), width), filler, np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, width - len(prompt):] = prompt
        pad = np.asarray([width - n for n in lengths], np.int32)
        # The reference stops once a row's buffer exceeds the text context: n_text_ctx + 1.
        limit = np.asarray([min(sample_len, n_text_ctx + 1 - n) for n in lengths], np.int32)
        sot_at = np.asarray([width - n + list(p).index(sot) for n, p in zip(lengths, prompts)], np.int32)
        seed = np.asarray(seeds if seeds is not None else range(len(prompts)), np.int64) % (1 << 31)
        return cls(tokens, RowSpec(pad, limit, sot_at, seed.astype(np.int32)))

    def take(self, rows: Sequence[int]) -> "PromptBatch":
        index = np.asarray(rows, np.int64)
        return PromptBatch(self.tokens[index], RowSpec(*(a[index] for a in self.rows)))

    def padded(self, rows: int, repeat: int = 1, sample_len: int = 224) -> "PromptBatch":
        """Each row repeated `repeat` times, then grown to `rows` rows by repeating row 0 (or by
        unpadded filler rows when there is none: a process with no work still takes part)."""
        if not self.tokens.shape[0]:
            width = self.tokens.shape[1]
            return PromptBatch(np.zeros((rows, width), np.int32),
                               RowSpec(np.zeros(rows, np.int32), np.full(rows, sample_len, np.int32),
                                       np.zeros(rows, np.int32), np.zeros(rows, np.int32)))
        index = np.repeat(np.arange(self.tokens.shape[0]), repeat)
        copy = np.concatenate([np.tile(np.arange(repeat), self.tokens.shape[0]), np.zeros(rows - index.size, int)])
        out = self.take(np.concatenate([index, np.zeros(rows - index.size, np.int64)]))
        seed = (out.rows.seed.astype(np.int64) * 7919 + copy) % (1 << 31)  # best-of copies draw differently
        return PromptBatch(out.tokens, out.rows._replace(seed=seed.astype(np.int32)))
