"""Beam search as a pure `jnp` step over a batch, and the host-side ranking of finished hypotheses.

Semantics follow the reference's `BeamSearchDecoder` and `MaximumLikelihoodRanker`: every beam
proposes its beam+1 best tokens; candidates are ranked by summed log-probability; the first
`beam` non-EOT candidates become the next beams, EOT candidates ranked above the last kept beam
finish, and each example collects up to round(beam * patience) finished hypotheses. At the first
step all beams hold the same prefix, so only beam 0 proposes (the reference de-duplicates).
Shapes: B examples, K beams, C finished slots, L token buffer, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


class BeamStep(NamedTuple):
    """Result of ranking one step's candidates."""

    source: jax.Array  # [B, K] beam each new beam extends
    next_tokens: jax.Array  # [B, K]
    scores: jax.Array  # [B, K] summed log-probabilities of the new beams
    finished_tokens: jax.Array  # [B, C, L] finished hypotheses, updated
    finished_scores: jax.Array  # [B, C]
    finished_count: jax.Array  # [B]


def beam_step(logprobs: jax.Array, tokens: jax.Array, sum_logprobs: jax.Array, length: jax.Array,
              first_step: jax.Array, eot: int, finished_tokens: jax.Array,
              finished_scores: jax.Array, finished_count: jax.Array) -> BeamStep:
    """Rank candidates of logprobs [B, K, V] (already filtered by the logit rules).

    tokens [B, K, L] hold each beam's tokens before position `length`.
    """
    batch, beams, _ = logprobs.shape
    slots = finished_tokens.shape[1]
    top_logprobs, top_tokens = jax.lax.top_k(logprobs, beams + 1)  # [B, K, K+1]
    scores = sum_logprobs[:, :, None] + top_logprobs
    beam_index = jnp.broadcast_to(jnp.arange(beams)[None, :, None], scores.shape)
    scores = jnp.where(first_step & (beam_index > 0), NEG_INF, scores)
    n = beams * (beams + 1)
    ranked_scores, order = jax.lax.top_k(scores.reshape(batch, n), n)  # sorted, ties by index
    ranked_tokens = jnp.take_along_axis(top_tokens.reshape(batch, n), order, axis=1)
    ranked_source = jnp.take_along_axis(beam_index.reshape(batch, n), order, axis=1)

    is_eot = ranked_tokens == eot
    texts_before = jnp.cumsum(~is_eot, axis=1) - (~is_eot)  # non-EOT candidates ranked above
    in_play = texts_before < beams
    rows = jnp.arange(batch)[:, None]

    beam_slot = jnp.where(~is_eot & in_play, texts_before, beams)  # `beams` = dropped
    source = jnp.zeros((batch, beams), jnp.int32).at[rows, beam_slot].set(ranked_source, mode="drop")
    next_tokens = jnp.zeros((batch, beams), jnp.int32).at[rows, beam_slot].set(ranked_tokens, mode="drop")
    new_scores = jnp.full((batch, beams), NEG_INF).at[rows, beam_slot].set(ranked_scores, mode="drop")

    newly_finished = is_eot & in_play
    order_among_new = jnp.cumsum(newly_finished, axis=1) - newly_finished
    slot = finished_count[:, None] + order_among_new
    accepted = newly_finished & (slot < slots)
    slot = jnp.where(accepted, slot, slots)
    hypotheses = jnp.take_along_axis(tokens, ranked_source[:, :, None], axis=1)  # [B, n, L]
    hypotheses = jax.lax.dynamic_update_slice_in_dim(
        hypotheses, jnp.full((batch, n, 1), eot, tokens.dtype), length, axis=2)
    finished_tokens = finished_tokens.at[rows, slot].set(hypotheses, mode="drop")
    finished_scores = finished_scores.at[rows, slot].set(ranked_scores, mode="drop")
    finished_count = finished_count + accepted.sum(axis=1).astype(finished_count.dtype)
    return BeamStep(source, next_tokens, new_scores, finished_tokens, finished_scores, finished_count)


def length_normalized(sum_logprob: float, length: int, length_penalty: Optional[float]) -> float:
    """The reference ranker's score: sum / length, or sum / ((5 + length) / 6) ** alpha."""
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return sum_logprob / penalty


def sampled_tokens(row: np.ndarray, sample_begin: int, eot: int) -> list[int]:
    """Tokens of a buffer row from `sample_begin` up to (not including) the first EOT."""
    sampled = row[sample_begin:].tolist()
    return sampled[:sampled.index(eot)] if eot in sampled else sampled


def pick_best(candidates: list[tuple[list[int], float]],
              length_penalty: Optional[float]) -> tuple[list[int], float]:
    """The (tokens, sum_logprob) with the best length-normalized score; first wins ties."""
    scores = [length_normalized(lp, len(tokens), length_penalty) for tokens, lp in candidates]
    return candidates[int(np.argmax(scores))]


def finalize_beams(finished_tokens: np.ndarray, finished_scores: np.ndarray, finished_count: int,
                   beam_tokens: np.ndarray, beam_scores: np.ndarray, beam_size: int,
                   sample_begin: int, eot: int) -> list[tuple[list[int], float]]:
    """One example's hypotheses: the finished ones, topped up with live beams when fewer than
    `beam_size` finished (the sample budget ran out), best live beams first."""
    candidates = [(sampled_tokens(finished_tokens[c], sample_begin, eot), float(finished_scores[c]))
                  for c in range(int(finished_count))]
    for k in np.argsort(beam_scores, kind="stable")[::-1]:
        if len(candidates) >= beam_size:
            break
        candidates.append((sampled_tokens(beam_tokens[k], sample_begin, eot), float(beam_scores[k])))
    return candidates
