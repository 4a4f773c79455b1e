"""Decoding one batch of 30 s windows: greedy, best-of sampling or beam search, with the
reference's temperature fallback. The device runs whole decodes; the host only ranks finished
hypotheses and decides, per window, whether to retry at the next temperature.

Shapes: B windows, M mels, N frames (3000), P prompt tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from whisper_nnx.sharding import multihost

from ..model.config import ModelDims
from .generate import DecodeConfig, Generator, RowSpec
from .logit_rules import LogitRules
from .options import DecodeOptions
from .search import pick_best
from .strategies import BeamSearch, Greedy, Sampling, Strategy
from .tokenizer import Tokenizer


@dataclasses.dataclass
class DecodedWindow:
    tokens: list[int]  # sampled tokens, no prompt, no EOT
    text: str
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    # word timestamps: (alignment matrix [n_text + 1, audio positions], text token probs)
    alignment: Optional[tuple[np.ndarray, list[float]]] = None


def bucket(n: int, multiple: int = 1) -> int:
    """Next power of two >= n, rounded up to a multiple of `multiple` (the data-parallel size):
    few batch shapes, few compilations, every device busy."""
    size = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    return -(-size // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("n", "copies", "rows"))
def _fit_rows(array: jax.Array, n: int, copies: int, rows: int) -> jax.Array:
    picked = jnp.repeat(array[:n], copies, axis=0) if copies > 1 else array[:n]
    extra = rows - picked.shape[0]
    if extra == 0:
        return picked
    filler = jnp.repeat(picked[:1], extra, axis=0) if n else jnp.zeros((extra, *array.shape[1:]), array.dtype)
    return jnp.concatenate([picked, filler])


def fit_rows(array: jax.Array, n: int, rows: int, copies: int = 1) -> jax.Array:
    """The first `n` rows of `array` [B, ...], each `copies` times in a row, grown to `rows` rows
    by repeating the first (zeros when n is 0; the padding rows' results are discarded) ->
    [rows, ...]. One compiled program per shape: as eager ops, each slice, repeat and
    concatenation was a program of its own to fetch from the compilation cache at start-up."""
    if n == array.shape[0] == rows and copies == 1:
        return array
    return _fit_rows(array, n=n, copies=copies, rows=rows)


def pad_rows(array: jax.Array, rows: int) -> jax.Array:
    """Grow a batch to `rows` rows by repeating its first row (zeros when it has none)."""
    return fit_rows(array, array.shape[0], rows)


def lockstep_rows(n: int, multiple: int) -> int:
    """Rows each process contributes to a call: every process must use the same count, so the
    largest need over processes, bucketed."""
    return bucket(multihost.global_max(n), multiple)


def suppressed_ids(tokenizer: Tokenizer, named: frozenset[int], n_vocab: int) -> tuple[int, ...]:
    """The reference's suppressed set: the `named` ids (-1: the non-speech symbols) plus the
    special tokens."""
    ids = set(named)
    if -1 in ids:
        ids.discard(-1)
        ids.update(tokenizer.non_speech_tokens)
    ids.update({tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                tokenizer.sot_lm, tokenizer.no_speech})
    return tuple(sorted(i for i in ids if 0 <= i < n_vocab))


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


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib of them), as the reference (whisper.utils) and faster-whisper:
    high values mean repetitive (looping) output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def needs_fallback(window: DecodedWindow, options: DecodeOptions) -> bool:
    """The reference's rule: too repetitive or too unlikely, unless it is silence."""
    rules = options.fallback
    too_repetitive = (rules.compression_ratio_threshold is not None
                      and window.compression_ratio > rules.compression_ratio_threshold)
    too_unlikely = rules.logprob_threshold is not None and window.avg_logprob < rules.logprob_threshold
    silence = (rules.no_speech_threshold is not None and too_unlikely
               and window.no_speech_prob > rules.no_speech_threshold)
    return (too_repetitive or too_unlikely) and not silence


def is_silence(window: DecodedWindow, options: DecodeOptions) -> bool:
    """The reference transcribe's skip rule: no speech is likely, and the decode is not
    confident enough to overrule that. Such a window contributes no text."""
    rules = options.fallback
    if rules.no_speech_threshold is None or window.no_speech_prob <= rules.no_speech_threshold:
        return False
    return rules.logprob_threshold is None or window.avg_logprob <= rules.logprob_threshold


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


class WindowDecoder:
    """Decodes batches of windows, each row with its own prompt, with temperature fallback."""

    def __init__(self, generator: Generator, dims: ModelDims):
        self.generator, self.dims = generator, dims

    def rules(self, tokenizer: Tokenizer, prompt_len: int, options: DecodeOptions) -> LogitRules:
        blank = tuple(tokenizer.encode(" ")) + (tokenizer.eot,) if options.rules.suppress_blank else ()
        return LogitRules(
            sample_begin=prompt_len, eot=tokenizer.eot, no_timestamps=tokenizer.no_timestamps,
            timestamp_begin=None if options.rules.without_timestamps else tokenizer.timestamp_begin,
            blank_ids=blank,
            suppress_ids=suppressed_ids(tokenizer, options.rules.listed_suppress_ids, self.dims.n_vocab),
            repetition_penalty=float(options.rules.repetition_penalty),
            no_repeat_ngram_size=int(options.rules.no_repeat_ngram_size))

    def decode(self, mel: jax.Array, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]],
               options: DecodeOptions, seeds: Optional[Sequence[int]] = None) -> list[DecodedWindow]:
        """mel [B', M, N] and one prompt per row (or one for all, as a flat list of ids) -> one
        DecodedWindow per prompt, each from the first temperature that passes; mel rows past
        the prompts (a bucketed batch's padding) are not decoded. `seeds` [B] name each row's
        random stream (give the same number for the same window, and sampling draws the same
        tokens in any batch)."""
        if prompts and isinstance(prompts[0], (int, np.integer)):
            prompts = [prompts] * mel.shape[0]
        n = len(prompts)
        if any(tokenizer.sot not in p for p in prompts):
            raise ValueError("every prompt must hold <|startoftranscript|>")
        batch = PromptBatch.build(prompts, tokenizer.sot, tokenizer.eot, options.search.sample_len,
                                  self.dims.n_text_ctx, seeds=seeds)
        results: list[Optional[DecodedWindow]] = [None] * n
        pending = list(range(n))
        temperatures = options.fallback.temperatures
        for attempt, temperature in enumerate(temperatures):
            index = np.asarray(pending, dtype=np.int32)
            rows = mel if len(pending) == n else jnp.take(mel, index, axis=0)  # retries: their rows only
            decoded = self._decode_once(rows, len(pending), batch.take(index), tokenizer, options, temperature,
                                        seed=options.search.seed + attempt)
            retry = []
            for row, window in zip(pending, decoded):
                if attempt + 1 < len(temperatures) and needs_fallback(window, options):
                    retry.append(row)
                else:
                    results[row] = window
            if multihost.global_max(len(retry)) == 0:  # every process agrees to stop
                break
            pending = retry
        return results  # type: ignore[return-value]

    def config(self, tokenizer: Tokenizer, prompt_len: int, options: DecodeOptions) -> DecodeConfig:
        """The static settings of decoding prompts of `prompt_len` tokens with `options`."""
        return DecodeConfig(rules=self.rules(tokenizer, prompt_len, options), sample_len=options.search.sample_len,
                            no_speech=tokenizer.no_speech)

    def _decode_once(self, mel: jax.Array, n: int, prompts: PromptBatch, tokenizer: Tokenizer,
                     options: DecodeOptions, temperature: float, seed: int) -> list[DecodedWindow]:
        """The first `n` rows of mel [B', M, N] decoded at one temperature."""
        prompt_len = prompts.tokens.shape[1]
        config = self.config(tokenizer, prompt_len, options)
        strategy = strategy_for(options, temperature)
        copies = strategy.copies
        padded = fit_rows(mel, n, lockstep_rows(n * copies, self.generator.batch_multiple), copies)
        rows = prompts.padded(padded.shape[0], repeat=copies, sample_len=options.search.sample_len)
        result = self.generator.generate(padded, rows.tokens, config, seed, temperature, rows.rows, strategy=strategy)
        result = self.generator.fetch(result, padded.shape[0])
        candidates = strategy.candidates(result, n, prompt_len, config.rules.eot)
        no_speech = np.asarray(result.no_speech_prob)[::copies]
        windows = []
        for i in range(n):
            tokens, sum_logprob = pick_best(candidates[i], options.search.length_penalty)
            text = tokenizer.decode(tokens).strip()
            windows.append(DecodedWindow(tokens, text, sum_logprob, sum_logprob / (len(tokens) + 1),
                                         float(no_speech[i]), compression_ratio(text), temperature))
        return windows


def strategy_for(options: DecodeOptions, temperature: float) -> Strategy:
    """The strategy that decodes at `temperature` under `options`, as the reference picks its
    decoder: beam search at temperature 0 when a beam size is set, best-of sampling above 0,
    else greedy."""
    search = options.search
    if temperature == 0 and search.beam_size is not None:
        return BeamSearch(beam_size=search.beam_size, patience=search.patience or 1.0)
    if temperature > 0:
        return Sampling(best_of=search.best_of or 1)
    return Greedy()
