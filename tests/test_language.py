"""Per-file language detection in long-form transcription (multilingual base checkpoint):
the detected language and its probabilities equal the reference transcribe's detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper

from reference import reference_model
from whisper_nnx.engine.audio import N_FRAMES, N_SAMPLES, load_audio
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.transcribe import TranscribeOptions


@pytest.mark.slow
def test_detected_languages_and_probabilities_match_the_reference(base, data_dir, transcripts):
    ours = base
    checkpoint = read_checkpoint(ours.checkpoint_path)
    ref = reference_model(checkpoint.dims, checkpoint.params)
    german, joe = load_audio(data_dir / "sample_german.flac"), load_audio(data_dir / "sample_joe.flac")
    # A German file of two windows (the language comes from its first 30 s) and an English one.
    files = [np.concatenate([german, np.zeros(16000, np.float32)] * 6), joe]
    records = ours.transcribe(files, TranscribeOptions.from_kwargs(temperature=0.0, batch_size=4))
    assert [r["language"] for r in records] == ["de", "en"]
    assert records[0]["windows"] >= 2 and records[0]["text"].count("Guten Morgen") >= 5  # espeak German: rough
    for audio, record in zip(files, records):
        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), ref.dims.n_mels, padding=N_SAMPLES)
        _, probs = ref.detect_language(whisper.pad_or_trim(mel, N_FRAMES))
        top = sorted(probs.items(), key=lambda kv: -kv[1])[:5]
        assert list(record["language_probs"]) == [code for code, _ in top]
        assert max(abs(record["language_probs"][code] - p) for code, p in top) < 1e-3


def test_choose_language_follows_faster_whisper():
    from whisper_nnx.engine.windows import choose_language

    en, de, nn = ({"en": 0.7, "de": 0.2, "nn": 0.1}, {"de": 0.9, "en": 0.05, "nn": 0.05},
                  {"nn": 0.4, "en": 0.35, "de": 0.25})
    assert choose_language([("nn", nn), ("de", de), ("en", en)], 0.5) == ("de", de)  # the first confident window
    weak_de, weaker_de = {"de": 0.45, "en": 0.3, "nn": 0.25}, {"de": 0.41, "en": 0.3, "nn": 0.29}
    assert choose_language([("nn", nn), ("de", weaker_de), ("de", weak_de)], 0.5) == ("de", weak_de)  # majority
    assert choose_language([("nn", nn), ("de", weak_de)], 0.5) == ("nn", nn)  # a tie: the first found
    assert choose_language([("en", en)], 0.9) == ("en", en)  # one window decides, confident or not


@pytest.mark.slow
def test_detection_over_several_windows_finds_speech_after_a_quiet_start(base, data_dir):
    """31 s of faint noise, then German: decoding every window (the reference's way), the first
    window alone picks a wrong language; with three windows the second one (German, confident)
    decides. By default the noise is skipped, and the one window detected is the German one."""
    from whisper_nnx.engine.transcribe import TranscribeOptions

    ours = base
    german = load_audio(data_dir / "sample_german.flac")
    noise = (np.random.default_rng(2).standard_normal(31 * 16000) * 2e-3).astype(np.float32)
    recording = np.concatenate([noise, german, german])
    first, several, default = (ours.transcribe([recording], TranscribeOptions.from_kwargs(
        temperature=0.0, **kwargs))[0] for kwargs in (
            {"language_detection_segments": 1, "skip_non_speech_s": None},
            {"language_detection_segments": 3, "skip_non_speech_s": None}, {}))
    assert first["language"] != "de"
    assert several["language"] == "de" and several["language_probs"]["de"] > 0.5
    assert default["language"] == "de" and default["language_probs"]["de"] > 0.5
    assert default["segments"][0]["start"] >= 30.0


@pytest.mark.slow
def test_language_per_window_follows_a_file_that_switches_language(base, data_dir):
    """42 s of English, then 34 s of German: with language per window the windows are decoded
    in the language found on each, and every segment records it (English first, German last)."""
    import glob

    ours = base
    gap = np.zeros(8000, np.float32)
    english = [load_audio(f) for f in sorted(glob.glob(str(data_dir / "corpus" / "joe_*.flac")))[:6]]
    german = load_audio(data_dir / "sample_german.flac")
    recording = np.concatenate([x for clip in english for x in (clip, gap)] + [gap] + [german, gap] * 6)
    got = ours.transcribe([recording], TranscribeOptions.from_kwargs(temperature=0.0, language_per_window=True))[0]
    languages = [s["language"] for s in got["segments"]]
    assert got["language"] == "en" and languages[0] == "en" and languages[-1] == "de"
    first_german = languages.index("de")
    assert languages[first_german:] == ["de"] * (len(languages) - first_german)  # no switch back
    assert all("Morgen" in s["text"] for s in got["segments"][first_german:])
    with pytest.raises(ValueError, match="language_per_window"):
        TranscribeOptions.from_kwargs(language="de", language_per_window=True)
