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
