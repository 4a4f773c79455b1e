"""Log-mel features against openai-whisper's torch implementation on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_nnx.engine.audio import N_SAMPLES, load_audio
from whisper_nnx.engine.features import log_mel_spectrogram, log_mel_spectrogram_jit, mel_filters

DATA = Path(__file__).parent / "data"
CLIPS = ["sample_joe.flac", "sample_espeak.flac"]


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return {name: load_audio(DATA / name) for name in CLIPS}


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_shipped_npz(n_mels):
    import whisper

    npz = Path(whisper.__file__).parent / "assets" / "mel_filters.npz"
    with np.load(npz) as f:
        ref = f[f"mel_{n_mels}"]
    ours = mel_filters(n_mels)
    assert ours.shape == ref.shape == (n_mels, 201) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)  # measured: 3.7e-9 abs


def _reference(audio: np.ndarray, n_mels: int, padding: int) -> np.ndarray:
    import torch
    import whisper.audio

    return whisper.audio.log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding).numpy()


@pytest.mark.parametrize("padding", [0, N_SAMPLES])
@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("name", CLIPS)
def test_log_mel_matches_reference(clips, name, n_mels, padding):
    audio = clips[name]
    ref = _reference(audio, n_mels, padding)
    ours = np.asarray(log_mel_spectrogram_jit(audio[None], n_mels=n_mels, padding=padding))[0]
    assert ours.shape == ref.shape == (n_mels, (audio.size + padding) // 160)
    err = np.abs(ours - ref).max()
    assert err < 1e-4, f"max abs error {err:.2e}"  # measured 1.6e-5 .. 5.3e-5


def test_log_mel_30s_window_matches_reference(clips):
    from whisper_nnx.engine.audio import pad_or_trim

    audio = pad_or_trim(clips["sample_joe.flac"])
    ours = np.asarray(log_mel_spectrogram_jit(audio[None], n_mels=80))[0]
    assert ours.shape == (80, 3000)
    assert np.abs(ours - _reference(audio, 80, 0)).max() < 1e-4


def test_batch_equals_examples_one_at_a_time(clips):
    a, b = clips["sample_joe.flac"], clips["sample_espeak.flac"]
    n = min(a.size, b.size)
    # Different loudness so a shared max would change the -8 floor of the quieter example.
    batch = np.stack([a[:n], 0.01 * b[:n]])
    together = np.asarray(log_mel_spectrogram_jit(batch, n_mels=80, padding=N_SAMPLES))
    for i in range(2):
        alone = np.asarray(log_mel_spectrogram_jit(batch[i : i + 1], n_mels=80, padding=N_SAMPLES))
        np.testing.assert_allclose(together[i], alone[0], atol=1e-6)
    assert np.abs(together[0] - together[1]).max() > 0.1


def test_eager_equals_jit(clips):
    audio = clips["sample_espeak.flac"][None]
    eager = np.asarray(log_mel_spectrogram(audio, n_mels=80))
    jitted = np.asarray(log_mel_spectrogram_jit(audio, n_mels=80))
    np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_silence_is_constant_floor():
    out = np.asarray(log_mel_spectrogram_jit(np.zeros((1, 16000), np.float32), n_mels=80))
    np.testing.assert_allclose(out, (-10.0 + 4.0) / 4.0)  # log10(1e-10) = -10 everywhere
