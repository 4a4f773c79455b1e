"""Log-mel features on device: float32 16 kHz audio [B, N] -> Whisper's log-mel [B, M, F].

Matches `whisper.audio.log_mel_spectrogram` (centred STFT with reflect padding, periodic Hann
window of N_FFT, hop HOP_LENGTH, last frame dropped, power spectrum, Slaney mel filterbank,
log10 clamped at 1e-10, floored at max - 8, (x + 4) / 4), batched with the max taken per
example, so a batch equals its examples computed one at a time.

Framing uses reshapes and slices instead of a gather: N_FFT (400) spans three hop blocks of
160 samples, so frame f is blocks f, f+1, f+2 concatenated and cut to 400 samples.
The spectrum is taken with `jnp.fft.rfft`, not a matmul with a windowed DFT matrix: on CPU
(2 cores, B=2 x 30 s, 80 mels) the DFT matmul was faster (16 ms against 23-35 ms) but less
accurate: max abs error vs the reference on the speech fixtures 8.4e-5 against 1.6e-5 for
rfft (against a float64 computation: 7.3e-5 vs 1.2e-5), since a float32 DFT accumulates
400 products per bin while the FFT's error grows with log2 of that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .audio import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE

N_FREQS = N_FFT // 2 + 1  # 201 rfft bins
_BLOCKS_PER_WINDOW = -(-N_FFT // HOP_LENGTH)  # 3 hop blocks cover one 400-sample window


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 bins per 200 Hz) below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0  # 27 mel steps per factor of 6.4 in frequency
    hz = np.asarray(hz, np.float64)
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = np.asarray(mel, np.float64)
    log_part = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log_part, mel * f_sp)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank over the rfft bins: [M, 201] float32.

    Same construction as `librosa.filters.mel(sr=16000, n_fft=400, n_mels=M)` (fmin 0,
    fmax sr/2, Slaney scale and area normalisation), which is what Whisper ships as
    `mel_filters.npz`. Computed in float64, returned read-only as float32.
    """
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FREQS)  # [201]
    # M + 2 edges equally spaced in mel: filter m rises from edge m to m+1, falls to m+2.
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(edges_hz)  # [M+1]
    offsets = edges_hz[:, None] - fft_hz[None, :]  # [M+2, 201]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [M, 201]
    # Slaney normalisation: every filter has unit area in Hz, so energy per band is comparable.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


def _periodic_hann() -> np.ndarray:
    """Periodic Hann window of N_FFT (the DFT-even variant torch.hann_window returns): [400]."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def _frames(audio: jax.Array) -> jax.Array:
    """Centred, reflect-padded STFT frames without the final frame: [B, N] -> [B, F, 400].

    F = N // HOP_LENGTH, i.e. torch.stft(center=True)'s 1 + N // hop frames minus the last.
    """
    half = N_FFT // 2
    padded = jnp.pad(audio, ((0, 0), (half, half)), mode="reflect")  # [B, N + 400]
    return _frames_of_padded(padded, audio.shape[-1] // HOP_LENGTH)


def _frames_of_padded(padded: jax.Array, n_frames: int) -> jax.Array:
    """[B, >= (n_frames + 2) * 160] samples, already centred -> [B, n_frames, 400]."""
    n_blocks = n_frames + _BLOCKS_PER_WINDOW - 1
    blocks = padded[:, : n_blocks * HOP_LENGTH].reshape(padded.shape[0], n_blocks, HOP_LENGTH)
    shifted = [blocks[:, k : k + n_frames] for k in range(_BLOCKS_PER_WINDOW)]
    return jnp.concatenate(shifted, axis=-1)[..., :N_FFT]


def _log_spec(frames: jax.Array, n_mels: int) -> jax.Array:
    """STFT frames [B, F, 400] -> log10 of the mel power spectrum, clamped at 1e-10: [B, M, F]."""
    frames = frames * jnp.asarray(_periodic_hann())
    spectrum = jnp.fft.rfft(frames, n=N_FFT, axis=-1)  # [B, F, 201] complex64
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    # HIGHEST: on GPU/TPU a default float32 matmul may run as TF32/bf16 passes, which costs
    # ~1e-3 in the log domain.
    mel = jnp.einsum("mk,bfk->bmf", jnp.asarray(mel_filters(n_mels)), power,
                     precision=jax.lax.Precision.HIGHEST)  # [B, M, F]
    return jnp.log10(jnp.maximum(mel, 1e-10))


def log_mel_spectrogram(audio: jax.Array, n_mels: int, padding: int = 0) -> jax.Array:
    """Whisper's log-mel spectrogram of 16 kHz audio: [B, N] -> [B, M, (N + padding) // 160].

    `padding` zeros are appended on the right first (Whisper pads N_SAMPLES so the last 30 s
    window is full). The -8 floor uses each example's own maximum. N + padding must exceed
    N_FFT // 2 for the reflect padding, as in the reference.
    """
    audio = jnp.asarray(audio, jnp.float32)
    if padding:
        audio = jnp.pad(audio, ((0, 0), (0, padding)))
    log_spec = _log_spec(_frames(audio), n_mels)  # [B, M, F]
    floor = jnp.max(log_spec, axis=(1, 2), keepdims=True) - 8.0
    return (jnp.maximum(log_spec, floor) + 4.0) / 4.0


log_mel_spectrogram_jit = jax.jit(log_mel_spectrogram, static_argnames=("n_mels", "padding"))


# --- windows of long files -------------------------------------------------------------------
# Long-form decoding reads 30 s windows at any frame offset of a file's spectrogram, as the
# reference slices the mel of the whole file (plus 30 s of zeros). Keeping that whole mel would
# cost twice the memory of the 16 kHz audio, so each window's frames are recomputed from the
# samples they cover: frame f of the file spans samples [f * 160, f * 160 + 400) of the file's
# centred signal (reflect padding on the left, 30 s + 200 zeros on the right). The -8 floor
# needs the maximum of the whole file first: `window_log_mel_max` gives it window by window.

# Centred samples read for 3000 frames: whole hop blocks, 480320 (the last 80 are unused).
WINDOW_SAMPLES = (N_FRAMES + _BLOCKS_PER_WINDOW - 1) * HOP_LENGTH


def centred_signal(audio: np.ndarray) -> np.ndarray:
    """A file's samples [N] as the reference's long-form STFT frames them: 200 reflected
    samples, the audio, N_SAMPLES + 200 zeros -> [N + N_SAMPLES + 400] float32."""
    half = N_FFT // 2
    body = np.concatenate([np.asarray(audio, np.float32), np.zeros(N_SAMPLES, np.float32)])
    return np.concatenate([body[half:0:-1], body, np.zeros(half, np.float32)])


def total_frames(n_samples: int) -> int:
    """Frames of the reference's mel of a file of `n_samples` plus 30 s of zeros."""
    return (n_samples + N_SAMPLES) // HOP_LENGTH


def window_samples(signal: np.ndarray, frame: int) -> np.ndarray:
    """The centred samples behind frames [frame, frame + 3000) -> [WINDOW_SAMPLES] (zeros past
    the end)."""
    piece = signal[frame * HOP_LENGTH: frame * HOP_LENGTH + WINDOW_SAMPLES]
    if piece.shape[0] < WINDOW_SAMPLES:
        piece = np.concatenate([piece, np.zeros(WINDOW_SAMPLES - piece.shape[0], np.float32)])
    return piece


@functools.partial(jax.jit, static_argnames=("n_mels",))
def window_log_mel_max(samples: jax.Array, audio_frames: jax.Array, n_mels: int) -> jax.Array:
    """samples [B, WINDOW_SAMPLES], audio_frames [B] frames to consider -> max log10 mel power [B]."""
    log_spec = _log_spec(_frames_of_padded(samples, N_FRAMES), n_mels)
    keep = jnp.arange(N_FRAMES)[None, None, :] < audio_frames[:, None, None]
    return jnp.max(jnp.where(keep, log_spec, -jnp.inf), axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("n_mels",))
def window_log_mel(samples: jax.Array, audio_frames: jax.Array, log_mel_max: jax.Array, n_mels: int) -> jax.Array:
    """Normalised log-mel windows, as the reference feeds its encoder in long-form decoding.

    samples [B, WINDOW_SAMPLES]; audio_frames [B]: frames of the window that hold the file (the
    rest are zeros in mel space, the reference's pad_or_trim of a short last segment); log_mel_max [B]:
    the maximum log10 power the -8 floor is taken from (the whole file's) -> [B, M, 3000].
    """
    log_spec = _log_spec(_frames_of_padded(samples, N_FRAMES), n_mels)
    mel = (jnp.maximum(log_spec, log_mel_max[:, None, None] - 8.0) + 4.0) / 4.0
    return jnp.where(jnp.arange(N_FRAMES)[None, None, :] < audio_frames[:, None, None], mel, 0.0)


class WindowFeatures:
    """The device side of long-form windows' features, as `windows.WindowPipeline` asks for it:
    `log_mel_max` (each window's loudness maximum, for a file's -8 floor) and `log_mel` (the
    encoder's input). One object so that a stand-in device (benchmarks/bench_feed.py) can take
    its place."""

    def log_mel_max(self, samples: np.ndarray, audio_frames: np.ndarray, n_mels: int) -> jax.Array:
        """samples [B, WINDOW_SAMPLES], audio_frames [B] -> [B] (`window_log_mel_max`)."""
        return window_log_mel_max(samples, audio_frames, n_mels=n_mels)

    def log_mel(self, samples: np.ndarray, audio_frames: np.ndarray, log_mel_max: np.ndarray,
                n_mels: int) -> jax.Array:
        """samples [B, WINDOW_SAMPLES], audio_frames [B], log_mel_max [B] -> [B, M, 3000]
        (`window_log_mel`)."""
        return window_log_mel(samples, audio_frames, log_mel_max, n_mels=n_mels)
