"""Each logit rule against the reference's rule on random token buffers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from whisper.decoding import ApplyTimestampRules, SuppressBlank, SuppressTokens
from whisper.tokenizer import get_tokenizer

from whisper_nnx.engine.decode.logit_rules import (
    LogitRules,
    apply_rules,
    apply_timestamp_rules,
    suppress_blank,
    suppress_tokens,
)

REF = get_tokenizer(multilingual=False)  # tiny.en's vocabulary: eot 50256, timestamps from 50363
V = 51864
SAMPLE_BEGIN = 3


def _rules(**kw) -> LogitRules:
    base = dict(sample_begin=SAMPLE_BEGIN, eot=REF.eot, no_timestamps=REF.no_timestamps,
                timestamp_begin=REF.timestamp_begin, blank_ids=tuple(REF.encode(" ")) + (REF.eot,),
                suppress_ids=(1, 2, 7, 50257, 50360), max_initial_timestamp_index=50)
    base.update(kw)
    return LogitRules(**base)


def _buffers(seed: int, batch: int = 16, buffer_len: int = 14):
    """Random logits and token buffers mixing text, timestamps (some decreasing) and EOT."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (batch, V)).astype(np.float32)
    # Make timestamps competitive so the "force a timestamp" rule fires in some rows.
    logits[:, REF.timestamp_begin:] += rng.normal(0, 1, (batch, 1)).astype(np.float32) * 3
    kinds = rng.integers(0, 3, (batch, buffer_len))
    text = rng.integers(0, REF.eot, (batch, buffer_len))
    stamps = REF.timestamp_begin + rng.integers(0, 1501, (batch, buffer_len))
    tokens = np.where(kinds == 0, stamps, text).astype(np.int32)
    tokens[:, :SAMPLE_BEGIN] = [REF.sot, 50359, 50360][:SAMPLE_BEGIN]
    return logits, tokens


def _reference(rule, logits: np.ndarray, tokens: np.ndarray, length: int) -> np.ndarray:
    out = torch.from_numpy(logits.copy())
    rule.apply(out, torch.from_numpy(tokens[:, :length].astype(np.int64)))
    return out.numpy()


def _assert_same(ours, ref):
    ours = np.asarray(ours)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = ~np.isneginf(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length", [SAMPLE_BEGIN, SAMPLE_BEGIN + 1, SAMPLE_BEGIN + 2, 9, 14])
def test_timestamp_rules_match_reference(seed, length):
    logits, tokens = _buffers(seed)
    ref = _reference(ApplyTimestampRules(REF, SAMPLE_BEGIN, 50), logits, tokens, length)
    ours = apply_timestamp_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(length), _rules())
    _assert_same(ours, ref)


@pytest.mark.parametrize("length", [SAMPLE_BEGIN, SAMPLE_BEGIN + 4])
def test_suppress_blank_and_tokens_match_reference(length):
    logits, tokens = _buffers(7)
    rules = _rules()
    ref = _reference(SuppressBlank(REF, SAMPLE_BEGIN), logits, tokens, length)
    _assert_same(suppress_blank(jnp.asarray(logits), jnp.int32(length), rules), ref)
    ref = _reference(SuppressTokens(list(rules.suppress_ids)), logits, tokens, length)
    _assert_same(suppress_tokens(jnp.asarray(logits), rules), ref)


def test_rules_compose_in_reference_order():
    logits, tokens = _buffers(11)
    rules = _rules()
    for length in (SAMPLE_BEGIN, 6, 12):
        ref = logits
        for rule in (SuppressBlank(REF, SAMPLE_BEGIN), SuppressTokens(list(rules.suppress_ids)),
                     ApplyTimestampRules(REF, SAMPLE_BEGIN, 50)):
            ref = _reference(rule, ref, tokens, length)
        _assert_same(apply_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(length), rules), ref)


def test_rules_without_timestamps_leave_timestamp_logits_alone():
    logits, tokens = _buffers(5)
    out = np.asarray(apply_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(8),
                                 _rules(timestamp_begin=None)))
    np.testing.assert_array_equal(out[:, REF.timestamp_begin:], logits[:, REF.timestamp_begin:])
    assert np.isneginf(out[:, 50257]).all()


# --- repetition guards (faster-whisper's / CTranslate2's options), against a plain computation ---

def _guard_reference(logits: np.ndarray, tokens: np.ndarray, length: int, penalty: float, ngram: int,
                     eot: int) -> np.ndarray:
    """Row by row in plain Python: the CTRL repetition penalty (a positive logit divided by the
    penalty, a negative one multiplied) on every text token sampled so far, then no n-gram of
    `ngram` tokens repeated: each sampled n-gram whose first n-1 tokens equal the last n-1
    sampled ones bans its last token. Both act on text tokens (< eot) only."""
    out = logits.astype(np.float64).copy()
    for b in range(out.shape[0]):
        sampled = [int(t) for t in tokens[b, SAMPLE_BEGIN:length]]
        if penalty != 1.0:
            for t in set(sampled):
                if t < eot:
                    out[b, t] = out[b, t] / penalty if out[b, t] > 0 else out[b, t] * penalty
        if ngram > 0 and len(sampled) >= ngram - 1:
            tail = sampled[len(sampled) - (ngram - 1):] if ngram > 1 else []
            for j in range(len(sampled) - ngram + 1):
                if sampled[j:j + ngram - 1] == tail and sampled[j + ngram - 1] < eot:
                    out[b, sampled[j + ngram - 1]] = -np.inf
    return out


@pytest.mark.parametrize("penalty, ngram", [(1.0, 0), (1.3, 0), (0.8, 0), (1.0, 1), (1.0, 2), (1.0, 3),
                                            (1.5, 3), (1.2, 5)])
@pytest.mark.parametrize("length", [SAMPLE_BEGIN, SAMPLE_BEGIN + 1, SAMPLE_BEGIN + 4, 60])
def test_repetition_guards_match_a_plain_computation(penalty, ngram, length):
    from whisper_nnx.engine.decode.logit_rules import apply_repetition_guards

    rng = np.random.default_rng(length * 31 + ngram)
    batch, buffer_len = 12, 64
    logits = rng.normal(0, 3, (batch, V)).astype(np.float32)
    # A few distinct tokens (text, some timestamps and EOT) so that n-grams repeat often.
    vocab = np.array([5, 11, 220, 1002, 1003, REF.eot, REF.timestamp_begin, REF.timestamp_begin + 7])
    tokens = vocab[rng.integers(0, vocab.size, (batch, buffer_len))]
    tokens[:, :SAMPLE_BEGIN] = 1002  # the prompt: never penalized
    tokens[:, length:] = 0  # unwritten
    rules = _rules(repetition_penalty=penalty, no_repeat_ngram_size=ngram)
    got = np.asarray(apply_repetition_guards(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(length), rules))
    want = _guard_reference(logits, tokens, length, penalty, ngram, REF.eot)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if ngram:
        assert np.isneginf(got).any() == np.isneginf(want).any()


def test_guards_are_off_by_default_and_applied_first():
    rules = _rules()
    assert rules.repetition_penalty == 1.0 and rules.no_repeat_ngram_size == 0
    logits, tokens = np.zeros((1, V), np.float32), np.full((1, 8), 1003)
    guarded = _rules(timestamp_begin=None, no_repeat_ngram_size=1)
    out = np.asarray(apply_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(6), guarded))
    assert np.isneginf(out[0, 1003]) and out[0, 1002] == 0.0
    unguarded = _rules(timestamp_begin=None)
    plain = np.asarray(apply_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.int32(6), unguarded))
    assert plain[0, 1003] == 0.0
