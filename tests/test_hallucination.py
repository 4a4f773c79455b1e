"""The opt-in hallucination filter: its patterns by hand, and on noise and speech end to end."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_nnx.engine.hallucination import repeated_ngram, suspect_reason
from whisper_nnx.engine.segments import Segment


def _segment(text: str, **stats) -> Segment:
    return Segment(0.0, 1.0, text, [], stats={"avg_logprob": -0.3, "no_speech_prob": 0.1, "compression_ratio": 1.2,
                                               **stats})


def test_repeated_ngram():
    assert repeated_ngram("you you you")
    assert repeated_ngram("Thank you. Thank you. Thank you.")
    assert repeated_ngram(" I'm going. I'm going. I'm going. I'm going.")
    assert not repeated_ngram("you you")  # twice is not a pattern
    assert not repeated_ngram("Thank you. Thank you. Thank you, all.")
    assert not repeated_ngram("The quick brown fox jumps over the lazy dog")
    assert not repeated_ngram("")


@pytest.mark.parametrize("stats, text, reason", [
    ({}, " Hello there.", None),
    ({"avg_logprob": -3.2}, " Hello friends!", "improbable at every fallback temperature"),
    ({"compression_ratio": 2.6}, " la la", "repetitive at every fallback temperature"),
    ({"no_speech_prob": 0.61, "avg_logprob": -0.97}, " You", "text over likely non-speech"),
    ({}, " you you you you", "repeated n-gram"),
])
def test_suspect_reasons(stats, text, reason):
    assert suspect_reason(_segment(text, **stats), -1.0, 0.6, 2.4) == reason


def test_switched_off_thresholds_do_not_flag():
    assert suspect_reason(_segment(" Hello", avg_logprob=-5.0, no_speech_prob=0.9, compression_ratio=9.0),
                          None, None, None) is None


@pytest.mark.slow
def test_filter_drops_made_up_text_on_noise_and_keeps_speech(tiny, data_dir):
    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.transcribe import TranscribeOptions

    clips = sorted((data_dir / "corpus").glob("*.flac"))[:6]
    babble = np.zeros(12 * 16000, np.float32)  # six clips reversed and overlaid: speech-like, no words
    for i, clip in enumerate(clips):
        x = load_audio(clip)[::-1]
        start = int(i * 1.3 * 16000) % (babble.size // 2)
        babble[start:start + x.size] += x[:babble.size - start]
    babble = babble / np.abs(babble).max() * 0.3
    speech = load_audio(data_dir / "sample_joe.flac")
    # two temperatures, not the default six: the filter's reasons only need the fallback to have
    # run through every temperature it was given (four fewer sampled retries of the babble)
    plain, filtered = (tiny.transcribe([babble, speech], TranscribeOptions.from_kwargs(
        beam_size=5, temperature=(0.0, 0.6), hallucination_filter=on)) for on in (False, True))
    assert plain[0]["text"] and not filtered[0]["text"] and filtered[0]["segments"] == []
    dropped = filtered[0]["dropped_segments"]
    assert [d["text"] for d in dropped] == [s["text"] for s in plain[0]["segments"]]
    assert all(d["dropped"] for d in dropped)
    assert filtered[1]["text"] == plain[1]["text"] and filtered[1]["dropped_segments"] == []
    assert "dropped_segments" not in plain[1]
