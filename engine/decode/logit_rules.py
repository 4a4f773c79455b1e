"""Whisper's logit rules as pure `jnp` over a batch: no host round trip per token.

Each rule maps logits [B, V] (float32), the token buffer [B, L] and the number of tokens
written so far (`length`: a traced int32 scalar shared by the batch, or [B], each row's own
under continuous batching) to filtered logits, with
the reference implementation's semantics (its `SuppressBlank`, `SuppressTokens`,
`ApplyTimestampRules`), applied in that order by `apply_rules`.

Before them, off by default, faster-whisper's (CTranslate2's) repetition guards
(`apply_repetition_guards`): `repetition_penalty` (CTRL's: a positive logit of a token already
sampled in this window is divided by it, a negative one multiplied) and `no_repeat_ngram_size`
(a token that would repeat an n-gram already sampled in this window is forbidden). Both look at
the window's sampled tokens only (not the prompt, which holds earlier windows' text on purpose)
and act on text tokens only: timestamps repeat by design.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class LogitRules:
    """Static settings of the rules for one decoding run (hashable: a jit static argument)."""

    sample_begin: int  # index of the first sampled token in the buffer
    eot: int
    no_timestamps: int
    timestamp_begin: Optional[int]  # None: decoding without timestamps (rules off)
    blank_ids: tuple[int, ...] = ()  # suppressed at the first sampled position (" " and EOT)
    suppress_ids: tuple[int, ...] = ()  # suppressed everywhere
    max_initial_timestamp_index: Optional[int] = 50  # 1.0 s / 0.02 s
    repetition_penalty: float = 1.0  # > 1 discourages text tokens already sampled (1: off)
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this many tokens sampled twice (0: off)


def _mask_ids(logits: jax.Array, ids: tuple[int, ...], where: jax.Array | bool = True) -> jax.Array:
    if not ids:
        return logits
    idx = jnp.asarray(ids, jnp.int32)
    current = logits[:, idx]
    return logits.at[:, idx].set(jnp.where(where, NEG_INF, current))


def _row_lengths(length: jax.Array, batch: int) -> jax.Array:
    """`length`, a scalar or [B] -> [B] int32."""
    return jnp.broadcast_to(jnp.asarray(length, jnp.int32), (batch,))


def _token_at(tokens: jax.Array, index: jax.Array) -> jax.Array:
    """tokens [B, L] at one position per row, index [B] (clamped to the buffer) -> [B]."""
    index = jnp.clip(index, 0, tokens.shape[1] - 1)
    return jnp.take_along_axis(tokens, index[:, None], axis=1)[:, 0]


def suppress_blank(logits: jax.Array, length: jax.Array, rules: LogitRules) -> jax.Array:
    """Forbid a blank or EOT as the first sampled token."""
    at_begin = _row_lengths(length, logits.shape[0]) == rules.sample_begin
    return _mask_ids(logits, rules.blank_ids, at_begin[:, None])


def suppress_tokens(logits: jax.Array, rules: LogitRules) -> jax.Array:
    """Forbid the configured token set (non-speech symbols and special tokens) everywhere."""
    return _mask_ids(logits, rules.suppress_ids)


def apply_timestamp_rules(logits: jax.Array, tokens: jax.Array, length: jax.Array,
                          rules: LogitRules) -> jax.Array:
    """Timestamps in pairs, never decreasing, first one <= max initial, forced when likely.

    logits [B, V], tokens [B, L] -> [B, V].
    """
    ts = rules.timestamp_begin
    vocab = jnp.arange(logits.shape[-1])[None, :]  # [1, V]
    logits = logits.at[:, rules.no_timestamps].set(NEG_INF)

    length = _row_lengths(length, logits.shape[0])  # [B]
    n_sampled = length - rules.sample_begin
    last = _token_at(tokens, length - 1)
    penultimate = _token_at(tokens, length - 2)
    last_was_ts = (n_sampled >= 1) & (last >= ts)  # [B]
    penultimate_was_ts = (n_sampled < 2) | (penultimate >= ts)
    after_pair = (last_was_ts & penultimate_was_ts)[:, None]
    after_single = (last_was_ts & ~penultimate_was_ts)[:, None]
    logits = jnp.where(after_pair & (vocab >= ts), NEG_INF, logits)  # must be text (or EOT)
    logits = jnp.where(after_single & (vocab < rules.eot), NEG_INF, logits)  # must close the pair

    # Timestamps may not decrease; a segment needs nonzero length unless it closes a pair.
    positions = jnp.arange(tokens.shape[1])[None, :]
    sampled_ts = (positions >= rules.sample_begin) & (positions < length[:, None]) & (tokens >= ts)
    last_ts_pos = jnp.max(jnp.where(sampled_ts, positions, -1), axis=1)  # [B]
    last_ts = jnp.take_along_axis(tokens, jnp.maximum(last_ts_pos, 0)[:, None], axis=1)[:, 0]
    floor = jnp.where(after_single[:, 0], last_ts, last_ts + 1)
    too_early = (last_ts_pos >= 0)[:, None] & (vocab >= ts) & (vocab < floor[:, None])
    logits = jnp.where(too_early, NEG_INF, logits)

    at_begin = (length == rules.sample_begin)[:, None]
    logits = jnp.where(at_begin & (vocab < ts), NEG_INF, logits)
    if rules.max_initial_timestamp_index is not None:
        last_allowed = ts + rules.max_initial_timestamp_index
        logits = jnp.where(at_begin & (vocab > last_allowed), NEG_INF, logits)

    logprobs = jax.nn.log_softmax(logits, axis=-1)
    timestamp_logprob = jax.nn.logsumexp(jnp.where(vocab >= ts, logprobs, NEG_INF), axis=-1)
    max_text_logprob = jnp.max(jnp.where(vocab < ts, logprobs, NEG_INF), axis=-1)
    force = (timestamp_logprob > max_text_logprob)[:, None]
    return jnp.where(force & (vocab < ts), NEG_INF, logits)


def _sampled_text(tokens: jax.Array, length: jax.Array, rules: LogitRules) -> jax.Array:
    """[B, L] bool: the positions holding a text token sampled in this window."""
    positions = jnp.arange(tokens.shape[1])[None, :]
    length = _row_lengths(length, tokens.shape[0])[:, None]
    return (positions >= rules.sample_begin) & (positions < length) & (tokens < rules.eot)


def _scatter_rows(mask: jax.Array, tokens: jax.Array, vocab_size: int) -> jax.Array:
    """[B, L] bool at token ids [B, L] -> [B, V] bool: row b has id t where some mask[b, j] names t."""
    rows = jnp.broadcast_to(jnp.arange(tokens.shape[0])[:, None], tokens.shape)
    ids = jnp.clip(tokens, 0, vocab_size - 1)
    return jnp.zeros((tokens.shape[0], vocab_size), bool).at[rows, ids].max(mask)


def apply_repetition_guards(logits: jax.Array, tokens: jax.Array, length: jax.Array,
                            rules: LogitRules) -> jax.Array:
    """The repetition penalty, then the n-gram ban (see the module docstring); logits [B, V],
    tokens [B, L] -> [B, V]."""
    vocab = logits.shape[-1]
    length = _row_lengths(length, logits.shape[0])  # [B]
    if rules.repetition_penalty != 1.0:
        seen = _scatter_rows(_sampled_text(tokens, length, rules), tokens, vocab)
        penalized = jnp.where(logits > 0, logits / rules.repetition_penalty, logits * rules.repetition_penalty)
        logits = jnp.where(seen, penalized, logits)
    n = rules.no_repeat_ngram_size
    if n > 0:
        buffer = tokens.shape[1]
        starts = jnp.arange(buffer)[None, :]  # j: an n-gram tokens[j : j + n]
        ends = starts + n - 1  # the token it would ban
        match = (starts >= rules.sample_begin) & (ends < length[:, None])
        for k in range(n - 1):  # tokens[j + k] == the k-th of the last n - 1 sampled tokens
            shifted = jnp.take(tokens, jnp.minimum(starts + k, buffer - 1)[0], axis=1)
            tail = _token_at(tokens, length - (n - 1) + k)[:, None]
            match = match & (shifted == tail)
        match = match & (length - rules.sample_begin >= n - 1)[:, None]
        banned_ids = jnp.take(tokens, jnp.minimum(ends, buffer - 1)[0], axis=1)
        banned = _scatter_rows(match & (banned_ids < rules.eot), banned_ids, vocab)
        logits = jnp.where(banned, NEG_INF, logits)
    return logits


def apply_rules(logits: jax.Array, tokens: jax.Array, length: jax.Array, rules: LogitRules) -> jax.Array:
    """All rules: the repetition guards (when on), then the reference's order: blank,
    suppressed set, timestamps."""
    if rules.repetition_penalty != 1.0 or rules.no_repeat_ngram_size > 0:
        logits = apply_repetition_guards(logits, tokens, length, rules)
    logits = suppress_blank(logits, length, rules)
    logits = suppress_tokens(logits, rules)
    if rules.timestamp_begin is not None:
        logits = apply_timestamp_rules(logits, tokens, length, rules)
    return logits
