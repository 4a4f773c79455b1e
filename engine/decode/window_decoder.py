"""Decoding one batch of 30 s windows: greedy, best-of sampling or beam search, with the
reference's temperature fallback. The device runs whole decodes; the host only ranks finished
hypotheses and decides, per window, whether to retry at the next temperature. Rows are padded
to few batch shapes here (`bucket`, `fit_rows`, `lockstep_rows`); the prompts they start from
are built in `prompts.py`.

Shapes: B windows, M mels, N frames (3000), P prompt tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from whisper_nnx.sharding import multihost

from ..model.config import ModelDims
from .generate import DecodeConfig, Generator, bucket
from .logit_rules import LogitRules
from .options import DecodeOptions
from .prompts import PromptBatch
from .search import pick_best
from .slots import SlotPrograms, SlotRequest, SlotResult, SlotService
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
    language: Optional[str] = None  # language per window: the one detected on it (its prompt's)


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


class WindowDecoder:
    """Decodes batches of windows, each row with its own prompt, with temperature fallback.

    `continuous`: greedy and sampling decode over slots (`slots.SlotDecoder`): a row that ends
    frees its slot for a waiting row (a fallback retry) while the others go on, instead of each
    temperature's retries waiting for the whole batch. Same tokens as the whole-batch programs;
    beam search and multi-process runs always decode whole batches."""

    def __init__(self, generator: Generator, dims: ModelDims, continuous: bool = False):
        self.generator, self.dims, self.continuous = generator, dims, continuous
        self._slot_service: Optional[SlotService] = None  # built on first use, shared by the lane's batches

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
        if self._slots_serve(options):
            return self._decode_continuous(mel, batch, tokenizer, options)
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
        if strategy.shrinkable:
            self._count(candidates, padded.shape[0], options.search.sample_len, strategy)
        no_speech = np.asarray(result.no_speech_prob)[::copies]
        return [self._window(candidates[i], float(no_speech[i]), tokenizer, options, temperature) for i in range(n)]

    @staticmethod
    def _window(candidates: list, no_speech: float, tokenizer: Tokenizer, options: DecodeOptions,
                temperature: float) -> DecodedWindow:
        """A window's best hypothesis among its candidates (tokens, summed log-probability)."""
        tokens, sum_logprob = pick_best(candidates, options.search.length_penalty)
        text = tokenizer.decode(tokens).strip()
        return DecodedWindow(tokens, text, sum_logprob, sum_logprob / (len(tokens) + 1), no_speech,
                             compression_ratio(text), temperature)

    def _slots_serve(self, options: DecodeOptions) -> bool:
        """Whether this decode runs over slots: asked for, no beam search, one process."""
        return (self.continuous and options.search.beam_size is None and jax.process_count() == 1
                and self.generator.mesh is None)

    def _decode_continuous(self, mel: jax.Array, batch: PromptBatch, tokenizer: Tokenizer,
                           options: DecodeOptions) -> list[DecodedWindow]:
        """`decode` over the generator's shared slots: every window's rows (best-of copies at
        temperatures above 0) are requests; a window whose best hypothesis needs the fallback
        queues its rows at the next temperature as soon as it is known. Each row carries the
        pad, limit, seed and run key the whole-batch path gives it, so the tokens are the same."""
        if self._slot_service is None:
            self._slot_service = SlotService(SlotPrograms(self.generator))
        n, prompt_len = batch.tokens.shape
        temperatures = options.fallback.temperatures
        results: list[Optional[DecodedWindow]] = [None] * n
        gathered: dict[tuple[int, int], list] = {}

        def rows(row: int, attempt: int) -> list[SlotRequest]:
            temperature = temperatures[attempt]
            copies = strategy_for(options, temperature).copies
            copied = batch.take([row]).padded(copies, repeat=copies)  # each best-of copy's seed, as whole
            return [SlotRequest(mel, row, copied.tokens[copy], tuple(int(a[copy]) for a in copied.rows), temperature,
                                options.search.seed + attempt, (row, attempt, copies, copy))
                    for copy in range(copies)]

        def finish(request: SlotRequest, result: SlotResult) -> None:
            row, attempt, copies, copy = request.tag
            got = gathered.setdefault((row, attempt), [])
            got.append((copy, result))
            if len(got) < copies:
                return
            got.sort(key=lambda g: g[0])  # copy order, as the whole batch returns them
            self.generator.counters.add(useful=sum(useful_steps([r.tokens for _, r in got], options.search.sample_len)))
            window = self._window([(r.tokens, r.sum_logprob) for _, r in got], got[0][1].no_speech_prob, tokenizer,
                                  options, temperatures[attempt])
            if attempt + 1 < len(temperatures) and needs_fallback(window, options):
                for retry in rows(row, attempt + 1):
                    request.call.ask(retry)
            else:
                results[row] = window

        self._slot_service.serve(self.config(tokenizer, prompt_len, options),
                                 [r for row in range(n) for r in rows(row, 0)],
                                 bucket(n, self.generator.batch_multiple), finish)
        return results  # type: ignore[return-value]

    def _count(self, candidates: list, width: int, sample_len: int, strategy) -> None:
        """Add a token-loop batch to the generator's counters: each real row's steps (its tokens
        and its end, up to `sample_len`) as useful; row-steps as the generator counted them
        when it decoded in stretches, else the batch's width for as long as its longest row."""
        steps = useful_steps([tokens for row in candidates for tokens, _ in row], sample_len)
        shrinks = getattr(self.generator, "shrinks", None)  # a stand-in device may not shrink
        whole = shrinks is None or not shrinks(width, strategy)  # one whole-loop program: to its last row's end
        self.generator.counters.add(row_steps=width * max(steps, default=0) if whole else 0, useful=sum(steps))


def useful_steps(hypotheses: list[list[int]], sample_len: int) -> list[int]:
    """The token-loop steps each hypothesis needed: its sampled tokens and its end, at most
    `sample_len` (what `DecodeCounters.useful` counts)."""
    return [min(len(tokens) + 1, sample_len) for tokens in hypotheses]


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
