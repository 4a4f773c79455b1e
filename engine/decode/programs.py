"""The pure traced programs of decoding: prefill, then a `lax.while_loop` of steps.

Nothing here places, fetches or loops on the host (that is `generate.Generator`, the runner);
every function is traceable and takes the model as an argument. How a step picks its tokens is
the strategy's (`strategies.py`): the greedy/sampling loop asks `strategy.choose`, beam search
has its own loop. Shapes: B batch, P prompt tokens, L = P + sample_len buffer, V vocabulary,
K beams, C finished slots, S audio positions, D model width.

Prompts of one batch may differ in length (sequential long-form conditions each file on its
own previous text): they arrive left-padded to P with `pad` [B] padding positions per row, and
`limit` [B] caps each row's sampled tokens (the reference stops when a row's own buffer would
pass the text context).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from ..model.kv_cache import KVCache
from ..model.whisper import Whisper
from .logit_rules import LogitRules, apply_rules
from .search import beam_step


class TokenChooser(Protocol):
    """What the greedy/sampling loop asks of its strategy (`strategies.TokenStrategy`)."""

    def choose(self, logits: jax.Array, temperature: jax.Array, key: jax.Array, seeds: jax.Array) -> jax.Array:
        """Filtered logits [B, V] -> next tokens [B]; `key` is this step's, `seeds` [B] each row's stream."""


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Static settings of one decoding run that every strategy shares (a jit static argument)."""

    rules: LogitRules
    sample_len: int = 224  # buffer room for sampled tokens (half the text context); `limit` may stop rows sooner
    sot_index: int = 0  # position of <|startoftranscript|> in the prompt (no-speech prob)
    no_speech: int | None = None  # <|nospeech|> id, None when the vocabulary lacks it


class DecodeState(NamedTuple):
    """The greedy/sampling while_loop carry."""

    length: jax.Array  # [] int32: tokens written to the buffer so far
    tokens: jax.Array  # [B, L] int32
    logits: jax.Array  # [B, V] float32: next-token logits at position `length`
    sum_logprobs: jax.Array  # [B] float32
    finished: jax.Array  # [B] bool
    cache: KVCache  # self-attention part only; cross K/V are loop constants
    rng: jax.Array


class DecodeResult(NamedTuple):
    tokens: jax.Array  # [B, L]: prompt, sampled tokens, EOT padding
    sum_logprobs: jax.Array  # [B]
    no_speech_prob: jax.Array  # [B]


class BeamState(NamedTuple):
    """The beam-search while_loop carry (K beams per example, C finished slots)."""

    length: jax.Array  # [] int32
    tokens: jax.Array  # [B, K, L]
    logits: jax.Array  # [B * K, V]
    sum_logprobs: jax.Array  # [B, K]
    finished_tokens: jax.Array  # [B, C, L]
    finished_scores: jax.Array  # [B, C]
    finished_count: jax.Array  # [B] int32
    cache: KVCache  # batch B * K, self-attention part only


class BeamResult(NamedTuple):
    finished_tokens: jax.Array  # [B, C, L]
    finished_scores: jax.Array  # [B, C]
    finished_count: jax.Array  # [B]
    beam_tokens: jax.Array  # [B, K, L]: live beams, for examples that finished too few
    beam_scores: jax.Array  # [B, K]
    no_speech_prob: jax.Array  # [B]


class RowSpec(NamedTuple):
    """Per-row loop constants of a batch of left-padded prompts."""

    pad: jax.Array  # [B] int32: leading padding positions
    limit: jax.Array  # [B] int32: most tokens the row may sample
    sot: jax.Array  # [B] int32: position of <|startoftranscript|> (the no-speech probability's)
    seed: jax.Array  # [B] int32: each row's own random stream (sampling), so a row draws the
    # same tokens whatever batch, batch position or process it is decoded in


def _step(model: Whisper, config: DecodeConfig, strategy: TokenChooser, cross: tuple, temperature: jax.Array,
          rows: RowSpec, state: DecodeState) -> DecodeState:
    rules = config.rules
    logits = apply_rules(state.logits, state.tokens, state.length, rules)
    # The run's key; each step folds in its length, each row its seed (a greedy step drops it).
    step_key = jax.random.fold_in(state.rng, state.length)
    next_tokens = strategy.choose(logits, temperature, step_key, rows.seed).astype(jnp.int32)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logprobs, next_tokens[:, None], axis=-1)[:, 0]
    sum_logprobs = state.sum_logprobs + jnp.where(state.finished, 0.0, chosen)
    next_tokens = jnp.where(state.finished, rules.eot, next_tokens)
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, next_tokens[:, None], state.length, axis=1)
    sampled = state.length + 1 - rules.sample_begin
    finished = state.finished | (next_tokens == rules.eot) | (sampled >= rows.limit)
    step_logits, cache = model.decode_step(next_tokens[:, None], state.length, state.cache.with_cross(cross),
                                           rows.pad)
    return DecodeState(state.length + 1, tokens, step_logits[:, -1], sum_logprobs, finished,
                       cache.without_cross()[0], state.rng)


def default_rows(rows: Optional[RowSpec], batch: int, config: DecodeConfig) -> RowSpec:
    """`rows`, or the layout of unpadded prompts that may each sample `config.sample_len` tokens."""
    if rows is not None:
        return rows
    return RowSpec(jnp.zeros((batch,), jnp.int32), jnp.full((batch,), config.sample_len, jnp.int32),
                   jnp.full((batch,), config.sot_index, jnp.int32), jnp.arange(batch, dtype=jnp.int32))


def start_from_features(model: Whisper, config: DecodeConfig, strategy: TokenChooser, features: jax.Array,
                        prompt: jax.Array, rng: jax.Array, temperature: jax.Array, rows: RowSpec,
                        stop: jax.Array) -> tuple[DecodeState, tuple, jax.Array]:
    """Prefill prompt [B, P] against features [B, S, D], then steps while the buffer holds fewer
    than `stop` tokens -> (loop state, cross K/V, no-speech probability [B]) (traceable)."""
    batch, prompt_len = prompt.shape
    total = prompt_len + config.sample_len
    logits, cache = model.prefill(features, prompt, total, rows.pad)
    cache, cross = cache.without_cross()
    no_speech_prob = _no_speech_prob(logits, rows.sot, config.no_speech)
    tokens = jnp.full((batch, total), config.rules.eot, jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, prompt.astype(jnp.int32), 0, axis=1)
    state = DecodeState(jnp.int32(prompt_len), tokens, logits[:, -1], jnp.zeros((batch,), jnp.float32),
                        jnp.zeros((batch,), bool), cache, rng)
    return run_steps(model, config, strategy, cross, temperature, rows, state, stop), cross, no_speech_prob


def run_steps(model: Whisper, config: DecodeConfig, strategy: TokenChooser, cross: tuple,
              temperature: jax.Array, rows: RowSpec, state: DecodeState, stop: jax.Array) -> DecodeState:
    """Decode steps until the buffer holds `stop` tokens or every row has finished (traceable)."""
    stop = jnp.minimum(stop, state.tokens.shape[1])
    return jax.lax.while_loop(lambda s: (s.length < stop) & ~jnp.all(s.finished),
                              functools.partial(_step, model, config, strategy, cross, temperature, rows), state)


def sample_from_features(model: Whisper, config: DecodeConfig, strategy: TokenChooser, features: jax.Array,
                         prompt: jax.Array, rng: jax.Array, temperature: jax.Array = 1.0,
                         rows: Optional[RowSpec] = None) -> DecodeResult:
    """features [B, S, D], prompt [B, P] (left-padded per `rows`) -> the continuation whose tokens
    `strategy.choose` picks (traceable)."""
    rows = default_rows(rows, prompt.shape[0], config)
    state, _, no_speech_prob = start_from_features(model, config, strategy, features, prompt, rng, temperature,
                                                   rows, jnp.int32(prompt.shape[1] + config.sample_len))
    return DecodeResult(state.tokens, state.sum_logprobs, no_speech_prob)


def take_rows(state: DecodeState, cross: tuple, rows: RowSpec, index: jax.Array
              ) -> tuple[DecodeState, tuple, RowSpec]:
    """The loop state, cross K/V and row layout of batch rows `index` [B'] (traceable)."""
    take = functools.partial(jnp.take, indices=index, axis=0)
    state = state._replace(tokens=take(state.tokens), logits=take(state.logits),
                           sum_logprobs=take(state.sum_logprobs), finished=take(state.finished),
                           cache=state.cache.reorder(index))
    return state, jax.tree.map(take, cross), RowSpec(*map(take, rows))


def _no_speech_prob(logits: jax.Array, sot: jax.Array, no_speech: int | None) -> jax.Array:
    """Softmax probability of <|nospeech|> at each row's <|startoftranscript|> (sot [B]): [B]."""
    if no_speech is None:
        return jnp.zeros((logits.shape[0],), jnp.float32)
    at_sot = jnp.take_along_axis(logits, sot[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return jax.nn.softmax(at_sot, axis=-1)[:, no_speech]


def _beam_loop_step(model: Whisper, config: DecodeConfig, cross: tuple, pad: jax.Array,
                    state: BeamState) -> BeamState:
    batch, beams, buffer = state.tokens.shape
    logits = apply_rules(state.logits, state.tokens.reshape(batch * beams, buffer), state.length,
                         config.rules)
    logprobs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, -1)
    step = beam_step(logprobs, state.tokens, state.sum_logprobs, state.length,
                     state.length == config.rules.sample_begin, config.rules.eot,
                     state.finished_tokens, state.finished_scores, state.finished_count)
    tokens = jnp.take_along_axis(state.tokens, step.source[:, :, None], axis=1)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, step.next_tokens[:, :, None], state.length, axis=2)
    step_logits, cache = model.decode_step(step.next_tokens.reshape(-1, 1), state.length,
                                           state.cache.reorder_beams(step.source).with_cross(cross), pad)
    return BeamState(state.length + 1, tokens, step_logits[:, -1], step.scores, step.finished_tokens,
                     step.finished_scores, step.finished_count, cache.without_cross()[0])


def beam_start_from_features(model: Whisper, config: DecodeConfig, beams: int, slots: int, features: jax.Array,
                             prompt: jax.Array, rows: Optional[RowSpec] = None
                             ) -> tuple[BeamState, tuple, jax.Array, jax.Array]:
    """features [B, S, D], prompt [B, P] (left-padded per `rows`) -> (the beam loop's state at
    length P, cross K/V, the length every row stops at, no-speech probability [B]) (traceable).
    Every row stops at the smallest of the rows' limits (beams of a row cannot be frozen one row
    at a time cheaply; rows only differ when a prompt leaves < sample_len tokens of context,
    i.e. after a window of > 220 tokens)."""
    batch, prompt_len = prompt.shape
    rows = default_rows(rows, batch, config)
    total = prompt_len + config.sample_len
    stop = prompt_len + jnp.minimum(jnp.min(rows.limit), config.sample_len)
    logits, cache = model.prefill(features, prompt, total, rows.pad)
    no_speech_prob = _no_speech_prob(logits, rows.sot, config.no_speech)
    # All beams start from the same prefix: prefill once per example, then repeat the self
    # cache. Cross K/V stay one per example: the beams of an example attend to them together
    # (attention_kernels.attend groups their queries), so each step reads them once, not once per beam.
    cache, cross = cache.without_cross()
    cache = jax.tree.map(lambda a: jnp.repeat(a, beams, axis=0), cache)
    tokens = jnp.full((batch, beams, total), config.rules.eot, jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(
        tokens, jnp.broadcast_to(prompt.astype(jnp.int32)[:, None], (batch, beams, prompt_len)), 0, axis=2)
    state = BeamState(
        length=jnp.int32(prompt_len), tokens=tokens, logits=jnp.repeat(logits[:, -1], beams, axis=0),
        sum_logprobs=jnp.zeros((batch, beams), jnp.float32),
        finished_tokens=jnp.full((batch, slots, total), config.rules.eot, jnp.int32),
        finished_scores=jnp.full((batch, slots), -jnp.inf, jnp.float32),
        finished_count=jnp.zeros((batch,), jnp.int32), cache=cache)
    return state, cross, stop, no_speech_prob


def run_beam_steps(model: Whisper, config: DecodeConfig, cross: tuple, rows: RowSpec, state: BeamState,
                   stop: jax.Array) -> BeamState:
    """Beam-search steps until buffer length `stop` or every row has all its finished slots
    filled (traceable); `rows.pad` [B] is per example, repeated over its beams here."""
    slots, beams = state.finished_tokens.shape[1], state.tokens.shape[1]
    return jax.lax.while_loop(
        lambda s: (s.length < stop) & ~jnp.all(s.finished_count >= slots),
        functools.partial(_beam_loop_step, model, config, cross, jnp.repeat(rows.pad, beams)), state)


def beam_search_from_features(model: Whisper, config: DecodeConfig, beams: int, slots: int, features: jax.Array,
                              prompt: jax.Array, rows: Optional[RowSpec] = None) -> BeamResult:
    """features [B, S, D], prompt [B, P] (left-padded per `rows`) -> beam-search hypotheses of
    `beams` beams, `slots` finished ones collected per row (traceable): `beam_start_from_features`
    then `run_beam_steps` to the end."""
    rows = default_rows(rows, prompt.shape[0], config)
    state, cross, stop, no_speech_prob = beam_start_from_features(model, config, beams, slots, features, prompt,
                                                                  rows)
    state = run_beam_steps(model, config, cross, rows, state, stop)
    return BeamResult(state.finished_tokens, state.finished_scores, state.finished_count, state.tokens,
                      state.sum_logprobs, no_speech_prob)


def detect_language_from_features(model: Whisper, features: jax.Array, sot: int,
                                  language_ids: tuple[int, ...]) -> jax.Array:
    """One decoder step on [sot]: probabilities over `language_ids` -> [B, n_languages]."""
    prompt = jnp.full((features.shape[0], 1), sot, jnp.int32)
    logits, _ = model.prefill(features, prompt, 1)
    return jax.nn.softmax(logits[:, 0, jnp.asarray(language_ids)], axis=-1)
