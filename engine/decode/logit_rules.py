"""Whisper's logit rules as pure `jnp` over a batch: no host round trip per token.

Each rule maps logits [B, V] (float32), the token buffer [B, L] and the number of tokens
written so far (`length`, a traced int32 scalar shared by the batch) to filtered logits, with
the reference implementation's semantics (its `SuppressBlank`, `SuppressTokens`,
`ApplyTimestampRules`), applied in that order by `apply_rules`.
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


def _mask_ids(logits: jax.Array, ids: tuple[int, ...], where: jax.Array | bool = True) -> jax.Array:
    if not ids:
        return logits
    idx = jnp.asarray(ids, jnp.int32)
    current = logits[:, idx]
    return logits.at[:, idx].set(jnp.where(where, NEG_INF, current))


def suppress_blank(logits: jax.Array, length: jax.Array, rules: LogitRules) -> jax.Array:
    """Forbid a blank or EOT as the first sampled token."""
    return _mask_ids(logits, rules.blank_ids, length == rules.sample_begin)


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

    n_sampled = length - rules.sample_begin
    last = jnp.take(tokens, jnp.maximum(length - 1, 0), axis=1)
    penultimate = jnp.take(tokens, jnp.maximum(length - 2, 0), axis=1)
    last_was_ts = (n_sampled >= 1) & (last >= ts)  # [B]
    penultimate_was_ts = (n_sampled < 2) | (penultimate >= ts)
    after_pair = (last_was_ts & penultimate_was_ts)[:, None]
    after_single = (last_was_ts & ~penultimate_was_ts)[:, None]
    logits = jnp.where(after_pair & (vocab >= ts), NEG_INF, logits)  # must be text (or EOT)
    logits = jnp.where(after_single & (vocab < rules.eot), NEG_INF, logits)  # must close the pair

    # Timestamps may not decrease; a segment needs nonzero length unless it closes a pair.
    positions = jnp.arange(tokens.shape[1])[None, :]
    sampled_ts = (positions >= rules.sample_begin) & (positions < length) & (tokens >= ts)
    last_ts_pos = jnp.max(jnp.where(sampled_ts, positions, -1), axis=1)  # [B]
    last_ts = jnp.take_along_axis(tokens, jnp.maximum(last_ts_pos, 0)[:, None], axis=1)[:, 0]
    floor = jnp.where(after_single[:, 0], last_ts, last_ts + 1)
    too_early = (last_ts_pos >= 0)[:, None] & (vocab >= ts) & (vocab < floor[:, None])
    logits = jnp.where(too_early, NEG_INF, logits)

    at_begin = length == rules.sample_begin
    logits = jnp.where(at_begin & (vocab < ts), NEG_INF, logits)
    if rules.max_initial_timestamp_index is not None:
        last_allowed = ts + rules.max_initial_timestamp_index
        logits = jnp.where(at_begin & (vocab > last_allowed), NEG_INF, logits)

    logprobs = jax.nn.log_softmax(logits, axis=-1)
    timestamp_logprob = jax.nn.logsumexp(jnp.where(vocab >= ts, logprobs, NEG_INF), axis=-1)
    max_text_logprob = jnp.max(jnp.where(vocab < ts, logprobs, NEG_INF), axis=-1)
    force = (timestamp_logprob > max_text_logprob)[:, None]
    return jnp.where(force & (vocab < ts), NEG_INF, logits)


def apply_rules(logits: jax.Array, tokens: jax.Array, length: jax.Array, rules: LogitRules) -> jax.Array:
    """All rules in the reference's order: blank, suppressed set, timestamps."""
    logits = suppress_blank(logits, length, rules)
    logits = suppress_tokens(logits, rules)
    if rules.timestamp_begin is not None:
        logits = apply_timestamp_rules(logits, tokens, length, rules)
    return logits
