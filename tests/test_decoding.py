"""Temperature fallback, best-of sampling and the silence rule."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_nnx.engine.decode.options import DecodeOptions
from whisper_nnx.engine.decode.search import pick_best
from whisper_nnx.engine.decode.window_decoder import DecodedWindow, is_silence, needs_fallback


def _window(avg_logprob: float, compression: float, no_speech: float) -> DecodedWindow:
    return DecodedWindow([1, 2], "x", avg_logprob * 3, avg_logprob, no_speech, compression, 0.0)


@pytest.mark.parametrize("avg,ratio,no_speech,fallback,silent", [
    (-0.3, 1.2, 0.01, False, False),  # confident speech
    (-1.5, 1.2, 0.01, True, False),  # too unlikely: retry
    (-0.3, 3.0, 0.01, True, False),  # too repetitive: retry
    (-1.5, 1.2, 0.90, False, True),  # unlikely, but silence: no retry, no text
    (-0.3, 3.0, 0.90, True, False),  # repetitive is retried even when no speech is likely
    (-0.5, 1.2, 0.90, False, False),  # no speech likely but the decode is confident: keep the text
])
def test_fallback_and_silence_rules_follow_the_reference(avg, ratio, no_speech, fallback, silent):
    options = DecodeOptions()
    window = _window(avg, ratio, no_speech)
    assert needs_fallback(window, options) is fallback
    assert is_silence(window, options) is silent


def test_thresholds_can_be_switched_off():
    off = DecodeOptions.from_kwargs(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
    assert not needs_fallback(_window(-5.0, 9.0, 0.99), off)
    assert not is_silence(_window(-5.0, 9.0, 0.99), off)


def test_pick_best_uses_length_normalized_scores():
    candidates = [([1, 2, 3, 4], -4.0), ([1, 2], -2.2), ([1], -1.5)]
    assert pick_best(candidates, None) == ([1, 2, 3, 4], -4.0)  # -1.0 per token beats -1.1, -1.5
    # A length penalty of 0 ranks by the plain sum.
    assert pick_best(candidates, 0.0) == ([1], -1.5)


@pytest.mark.slow
def test_fallback_walks_the_temperatures(tiny, data_dir):
    from whisper_nnx.engine.transcribe import TranscribeOptions

    files = [data_dir / "sample_joe.flac", data_dir / "sample_espeak.flac"]
    easy = tiny.decode_clips(files, TranscribeOptions.from_kwargs(language="en", temperature=(0.0, 0.5, 1.0)))
    assert [r["temperature"] for r in easy] == [0.0, 0.0]
    # An unreachable log-probability threshold: every window is retried up to the last temperature.
    hard = TranscribeOptions.from_kwargs(language="en", temperature=(0.0, 0.5, 1.0), best_of=3, logprob_threshold=0.0)
    records = tiny.decode_clips(files, hard)
    assert [r["temperature"] for r in records] == [1.0, 1.0]
    assert all(r["text"] for r in records)
    again = tiny.decode_clips(files, hard)  # sampling is seeded: the same run gives the same text
    assert [r["tokens"] for r in again] == [r["tokens"] for r in records]


@pytest.mark.slow
def test_sampling_best_of_picks_the_most_likely_sample(tiny, data_dir):
    from whisper_nnx.engine.transcribe import TranscribeOptions

    path = [data_dir / "sample_espeak.flac"]
    sampled = dict(language="en", temperature=1.0, seed=4)
    one = tiny.decode_clips(path, TranscribeOptions.from_kwargs(**sampled, best_of=1))[0]
    many = tiny.decode_clips(path, TranscribeOptions.from_kwargs(**sampled, best_of=8))[0]
    greedy = tiny.decode_clips(path, TranscribeOptions.from_kwargs(language="en", temperature=0.0))[0]
    # The best of 8 is at least as likely (per token) as a single sample, and sampling at T=1 is
    # really sampling: some draw differs from the greedy tokens.
    assert many["avg_logprob"] >= one["avg_logprob"] - 1e-6
    samples = [tiny.decode_clips(path, TranscribeOptions.from_kwargs(language="en", temperature=1.0, best_of=1,
                                                              seed=s))[0]["tokens"] for s in range(3)]
    assert any(s != greedy["tokens"] for s in samples + [one["tokens"]])


@pytest.mark.slow
def test_silence_rule_on_silent_audio(tiny):
    """tiny.en famously says "you" to silence with avg log-prob about -0.7: under the default
    -1.0 threshold the reference keeps that text; under -0.5 the window counts as silence and
    gives an empty transcript, without temperature fallback."""
    from whisper_nnx.engine.transcribe import TranscribeOptions

    silence = np.zeros(16000 * 5, np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-4, 16000 * 5).astype(np.float32)
    default = tiny.decode_clips([silence, noise], TranscribeOptions(language="en"))
    options = TranscribeOptions.from_kwargs(language="en", logprob_threshold=-0.5)
    strict = tiny.decode_clips([silence, noise], options)
    for kept, skipped in zip(default, strict):
        assert kept["no_speech_prob"] > 0.6 and -1.0 < kept["avg_logprob"] <= -0.5
        assert kept["text"] != "" and kept["segments"]
        assert skipped["error"] is None and skipped["duration_s"] == 5.0 and skipped["temperature"] == 0.0
        assert skipped["text"] == "" and skipped["segments"] == []


@pytest.mark.slow
def test_repetition_guards_change_a_repetitive_window(tiny, data_dir):
    """"Thank you." said eight times: with no_repeat_ngram_size 3 no sampled 3-gram ending in a text
    token repeats (timestamps may); a strong repetition penalty changes the text; both are off by default."""
    from whisper_nnx.engine.transcribe import TranscribeOptions

    clip = [data_dir / "sample_thanks.flac"]
    base = dict(language="en", temperature=0.0)
    plain = tiny.decode_clips(clip, TranscribeOptions.from_kwargs(**base))[0]
    default = tiny.decode_clips(clip, TranscribeOptions.from_kwargs(**base, no_repeat_ngram_size=0,
                                                                            repetition_penalty=1.0))[0]
    assert plain["tokens"] == default["tokens"]
    eot = tiny.tokenizer.eot

    def ngrams(tokens, n):  # the sampled n-grams that end in a text token (the ones the guard forbids twice)
        return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1) if tokens[i + n - 1] < eot]

    assert len(set(ngrams(plain["tokens"], 3))) < len(ngrams(plain["tokens"], 3))  # it does repeat
    guarded = tiny.decode_clips(clip, TranscribeOptions.from_kwargs(**base, no_repeat_ngram_size=3))[0]
    grams = ngrams(guarded["tokens"], 3)
    assert grams and len(set(grams)) == len(grams)
    penalized = tiny.decode_clips(clip, TranscribeOptions.from_kwargs(**base, repetition_penalty=3.0))[0]
    assert penalized["tokens"] != plain["tokens"]
    with pytest.raises(ValueError, match="repetition_penalty"):
        TranscribeOptions.from_kwargs(repetition_penalty=0.0)
