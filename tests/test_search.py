"""Beam search against the reference's BeamSearchDecoder on a toy scorer; beam 1 equals greedy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from whisper.decoding import BeamSearchDecoder, MaximumLikelihoodRanker

from whisper_nnx.engine.decode.search import beam_step, finalize_beams, pick_best

V, EOT, PROMPT = 10, 9, 2


class _NoCache:
    def rearrange_kv_cache(self, source_indices):
        pass


def _toy_logits(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """A Markov scorer: next-token logits depend on the last token and the length."""
    return table[tokens[..., -1]] + 0.1 * tokens.shape[-1] * np.arange(V)[::-1]


def _ours(table, batch, beams, patience, steps, length_penalty):
    slots = max(1, round(beams * patience))
    total = PROMPT + steps
    tokens = np.full((batch, beams, total), EOT, np.int32)
    tokens[:, :, :PROMPT] = np.arange(PROMPT)
    sums = jnp.zeros((batch, beams))
    fin_tokens = jnp.full((batch, slots, total), EOT, jnp.int32)
    fin_scores = jnp.full((batch, slots), -jnp.inf)
    fin_count = jnp.zeros((batch,), jnp.int32)
    step = jax.jit(beam_step, static_argnames=("eot",))
    history = []
    for t in range(PROMPT, total):
        logits = _toy_logits(table, tokens[:, :, :t])  # [B, K, V]
        out = step(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1), jnp.asarray(tokens), sums,
                   jnp.int32(t), jnp.bool_(t == PROMPT), EOT, fin_tokens, fin_scores, fin_count)
        tokens = np.take_along_axis(tokens, np.asarray(out.source)[:, :, None], axis=1)
        tokens[:, :, t] = np.asarray(out.next_tokens)
        sums, fin_tokens, fin_scores, fin_count = out.scores, out.finished_tokens, out.finished_scores, \
            out.finished_count
        history.append(tokens[:, :, :t + 1].copy())
        if bool(jnp.all(fin_count >= slots)):
            break
    choices = []
    for b in range(batch):
        candidates = finalize_beams(np.asarray(fin_tokens[b]), np.asarray(fin_scores[b]), int(fin_count[b]),
                                    tokens[b], np.asarray(sums[b]), beams, PROMPT, EOT)
        choices.append((candidates, pick_best(candidates, length_penalty)))
    return history, choices


def _reference(table, batch, beams, patience, steps, length_penalty):
    decoder = BeamSearchDecoder(beams, EOT, _NoCache(), patience)
    decoder.reset()
    tokens = torch.arange(PROMPT).repeat(batch * beams, 1)
    sums = torch.zeros(batch * beams)
    history = []
    for _ in range(steps):
        logits = torch.from_numpy(_toy_logits(table, tokens.numpy()).astype(np.float32))
        tokens, completed = decoder.update(tokens, logits, sums)
        history.append(tokens.numpy().reshape(batch, beams, -1))
        if completed:
            break
    finished, scores = decoder.finalize(tokens.reshape(batch, beams, -1), sums.reshape(batch, beams))
    sampled = [[t[PROMPT:(t == EOT).nonzero()[0, 0]].tolist() for t in s] for s in finished]
    picks = MaximumLikelihoodRanker(length_penalty).rank(sampled, scores)
    return history, [(list(zip(s, lp)), (s[i], lp[i])) for s, lp, i in zip(sampled, scores, picks)]


@pytest.mark.parametrize("seed,beams,patience,length_penalty",
                         [(0, 3, None, None), (1, 4, 2.0, None), (2, 2, 1.5, 1.0), (3, 5, None, 0.6)])
def test_beam_search_matches_reference_decoder(seed, beams, patience, length_penalty):
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 2, (V, V)).astype(np.float32)
    table[:, EOT] -= 1.5  # let hypotheses run a few steps before ending
    batch, steps = 3, 7
    ours_hist, ours = _ours(table, batch, beams, patience or 1.0, steps, length_penalty)
    ref_hist, ref = _reference(table, batch, beams, patience, steps, length_penalty)
    assert len(ours_hist) == len(ref_hist)
    for mine, theirs in zip(ours_hist, ref_hist):  # the live beams, step by step
        np.testing.assert_array_equal(mine, theirs)
    for (cands, best), (ref_cands, ref_best) in zip(ours, ref):
        assert [c[0] for c in cands] == [c[0] for c in ref_cands]
        np.testing.assert_allclose([c[1] for c in cands], [c[1] for c in ref_cands], rtol=1e-5)
        assert best[0] == ref_best[0]


@pytest.mark.slow
def test_beam_of_one_equals_greedy(tiny, data_dir):
    from whisper_nnx.engine.transcribe import TranscribeOptions

    files = [data_dir / "sample_joe.flac", data_dir / "sample_espeak.flac"]
    greedy = tiny.decode_clips(files, TranscribeOptions.from_kwargs(language="en", temperature=0.0))
    beam1 = tiny.decode_clips(files, TranscribeOptions.from_kwargs(language="en", temperature=0.0, beam_size=1))
    for g, b in zip(greedy, beam1):
        assert g["tokens"] == b["tokens"] and len(g["tokens"]) > 5
        assert abs(g["avg_logprob"] - b["avg_logprob"]) < 1e-5
