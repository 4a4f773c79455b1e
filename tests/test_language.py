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
from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber


@pytest.mark.slow
def test_detected_languages_and_probabilities_match_the_reference(data_dir, transcripts):
    ours = Transcriber("base")
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
