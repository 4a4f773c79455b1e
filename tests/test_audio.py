"""load_audio against the known signal (and openai-whisper's ffmpeg loader where ffmpeg
exists), plus one test per way an input can be unusable."""

from __future__ import annotations

import fractions
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from whisper_nnx.engine.audio import (
    FRAMES_PER_SECOND,
    N_FRAMES,
    N_SAMPLES,
    N_SAMPLES_PER_TOKEN,
    SAMPLE_RATE,
    TOKENS_PER_SECOND,
    AudioDecodeError,
    load_audio,
    pad_or_trim,
)

TONE_HZ = 440.0
SECONDS = 4.0
LEFT, RIGHT = 0.5, 0.3  # stereo amplitudes; the mono mix is their mean

# (file name, codec, container format, input rate, max abs error vs the ideal tone)
ENCODINGS = [
    ("tone.wav", "pcm_s16le", None, 44100, 1e-4),  # 16-bit quantisation + resampler ripple
    ("tone.flac", "flac", None, 44100, 1e-4),
    ("tone.mp3", "libmp3lame", None, 44100, 0.05),  # lossy codecs: a few % of full scale
    ("tone.ogg", "libopus", "ogg", 48000, 0.05),
    ("tone.m4a", "aac", "mp4", 44100, 0.05),
    ("tone.mkv", "flac", "matroska", 22050, 1e-4),
]


def _write(path: Path, x: np.ndarray, rate: int, codec: str, fmt: str | None) -> None:
    """Encode float audio [C, n] (C = 1 or 2) with PyAV."""
    layout = "stereo" if x.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        sample_fmt = stream.codec_context.codec.audio_formats[0].name
        stream.format = sample_fmt
        planar = av.AudioFormat(sample_fmt).is_planar
        step = stream.codec_context.frame_size or 1024
        for start in range(0, x.shape[1], step):
            chunk = x[:, start : start + step]
            data = chunk if planar else chunk.T.reshape(1, -1)
            if sample_fmt.startswith("s16"):
                data = np.round(data * 32767).astype(np.int16)
            elif sample_fmt.startswith("s32"):
                data = np.round(data * (2**31 - 1)).astype(np.int32)
            elif sample_fmt.startswith("dbl"):
                data = data.astype(np.float64)
            elif sample_fmt.startswith("u8"):
                data = np.round(data * 127 + 128).astype(np.uint8)
            else:
                data = data.astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), sample_fmt, layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _stereo_tone(rate: int) -> np.ndarray:
    t = np.arange(int(SECONDS * rate)) / rate
    tone = np.sin(2 * np.pi * TONE_HZ * t)
    return np.stack([LEFT * tone, RIGHT * tone])  # [2, n]


@pytest.fixture(scope="module")
def tone_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tones")
    files = {}
    for name, codec, fmt, rate, _ in ENCODINGS:
        _write(folder / name, _stereo_tone(rate), rate, codec, fmt)
        files[name] = folder / name
    return files


def test_constants():
    assert (N_SAMPLES, N_FRAMES) == (480000, 3000)
    assert (N_SAMPLES_PER_TOKEN, FRAMES_PER_SECOND, TOKENS_PER_SECOND) == (320, 100, 50)


@pytest.mark.parametrize("name,codec,fmt,rate,tol", ENCODINGS)
def test_load_audio_matches_ideal_tone(tone_files, name, codec, fmt, rate, tol):
    audio = load_audio(tone_files[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC in an MP4 written by PyAV keeps the encoder's end padding (no edit list): up to one
    # 1024-sample frame at the input rate; ffmpeg (the reference loader) decodes the same length.
    slack = 1024 / rate if codec == "aac" else 0.01
    assert abs(audio.size - SECONDS * SAMPLE_RATE) <= slack * SAMPLE_RATE
    t = np.arange(audio.size) / SAMPLE_RATE
    ideal = (LEFT + RIGHT) / 2 * np.sin(2 * np.pi * TONE_HZ * t)
    inner = slice(SAMPLE_RATE // 10, -SAMPLE_RATE // 10)  # codec/resampler edge transients
    err = np.abs(audio[inner] - ideal[inner]).max()
    assert err < tol, f"{name}: max abs error {err:.2e}"


@pytest.mark.parametrize("name,codec,fmt,rate,tol", ENCODINGS)
def test_load_audio_matches_reference_loader(tone_files, name, codec, fmt, rate, tol):
    import whisper.audio

    if shutil.which("ffmpeg") is None:  # a failure, not a skip: these comparisons must run
        pytest.fail("the reference loader needs the ffmpeg CLI: apt-get install ffmpeg (see README, Quickstart)")

    ours = load_audio(tone_files[name])
    ref = whisper.audio.load_audio(str(tone_files[name]))
    assert abs(ours.size - ref.size) <= 2
    n = min(ours.size, ref.size)
    inner = slice(SAMPLE_RATE // 10, n - SAMPLE_RATE // 10)
    # Different resamplers (soxr vs swresample) and the reference's 16-bit output: ~1e-4.
    err = np.abs(ours[inner] - ref[inner]).max()
    assert err < 5e-4, f"{name}: max abs error vs whisper.audio.load_audio {err:.2e}"


def test_mono_48k_float_passes_through(tmp_path):
    rate = 48000
    t = np.arange(rate) / rate
    x = (0.25 * np.sin(2 * np.pi * 1000 * t))[None]
    _write(tmp_path / "f.wav", x, rate, "pcm_f32le", None)
    audio = load_audio(tmp_path / "f.wav")
    ideal = 0.25 * np.sin(2 * np.pi * 1000 * np.arange(audio.size) / SAMPLE_RATE)
    assert np.abs(audio[800:-800] - ideal[800:-800]).max() < 1e-4


def _expect_error(path: Path, *fragments: str) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path)
    reason = info.value.reason
    assert "\n" not in reason
    assert any(f in reason for f in fragments), reason
    return info.value


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.wav", "not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _expect_error(tmp_path / "empty.wav", "empty")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    err = _expect_error(path, "not a readable audio/video file")
    assert isinstance(err.__cause__, av.error.FFmpegError)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world\n" * 100)
    _expect_error(path, "not an audio/video file")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("hello world\n" * 100)
    _expect_error(path, "not a readable audio/video file")


@pytest.mark.parametrize("name", ["tone.flac", "tone.mp3"])
def test_truncated_mid_stream(tone_files, tmp_path, name):
    data = tone_files[name].read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated")


@pytest.mark.parametrize("name", [e[0] for e in ENCODINGS])
def test_truncated_to_header(tone_files, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(tone_files[name].read_bytes()[:60])
    _expect_error(path, "truncated", "not a readable", "no audio samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = 0.1 * np.sin(np.arange(SAMPLE_RATE) / 10.0)[None]
    x[0, 5000] = bad
    _write(tmp_path / "bad.wav", x, SAMPLE_RATE, "pcm_f32le", None)
    _expect_error(tmp_path / "bad.wav", "non-finite")


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    _expect_error(path, "no audio stream")


def test_speech_fixture_decodes():
    audio = load_audio(Path(__file__).parent / "data" / "sample_joe.flac")
    assert 3 * SAMPLE_RATE < audio.size < 7 * SAMPLE_RATE
    assert 0.5 < np.abs(audio).max() <= 1.0


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(pad_or_trim(x, 3), x[:, :3])
    np.testing.assert_array_equal(pad_or_trim(x, 7), np.concatenate([x, np.zeros((2, 2))], 1))
    np.testing.assert_array_equal(pad_or_trim(x, 1, axis=0), x[:1])
    assert pad_or_trim(x, 5) is x
    assert pad_or_trim(np.ones(3, np.float32)).shape == (N_SAMPLES,)


def test_audio_track_of_a_video(tmp_path):
    """An mkv with a video stream first and a FLAC audio track: the audio track is decoded."""
    rate = 22050
    tone = _stereo_tone(rate)
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("flac", rate=rate, layout="stereo")
        for i in range(int(SECONDS * 10)):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        step = 4096
        for start in range(0, tone.shape[1], step):
            data = np.round(tone[:, start:start + step].T.reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), "s16", "stereo")
            frame.sample_rate, frame.pts = rate, start
            frame.time_base = fractions.Fraction(1, rate)
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)
    decoded = load_audio(path)
    assert abs(decoded.size - SECONDS * SAMPLE_RATE) <= 0.01 * SAMPLE_RATE
    t = np.arange(decoded.size) / SAMPLE_RATE
    ideal = (LEFT + RIGHT) / 2 * np.sin(2 * np.pi * TONE_HZ * t)
    inner = slice(SAMPLE_RATE // 10, -SAMPLE_RATE // 10)
    assert np.abs(decoded[inner] - ideal[inner]).max() < 1e-3


def test_a_binary_file_object_decodes_as_its_path(data_dir, tmp_path):
    """Dataset rows and downloads arrive as bytes: load_audio takes a binary file object and
    gives exactly the samples of the same file by path; bad bytes give the same one-line errors."""
    import io

    from whisper_nnx.engine.audio import AudioDecodeError

    path = data_dir / "sample_joe.flac"
    by_path = load_audio(path)
    with open(path, "rb") as handle:
        assert np.array_equal(load_audio(handle), by_path)
    assert np.array_equal(load_audio(io.BytesIO(path.read_bytes())), by_path)
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(io.BytesIO(b""))
    with pytest.raises(AudioDecodeError, match="not a readable audio/video file"):
        load_audio(io.BytesIO(b"this is text, not audio" * 20))
    half = path.read_bytes()[: path.stat().st_size // 2]
    with pytest.raises(AudioDecodeError, match="truncated|corrupt"):
        load_audio(io.BytesIO(half))


@pytest.mark.slow  # a fresh interpreter
def test_decoders_are_imported_only_when_a_file_is_decoded():
    """PyAV (~0.2 s to import) and soxr load on the first decode, not with the engine: arrays and
    dataset features transcribe without them, and start-up does not pay for them."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "import whisper_nnx.engine.transcribe, whisper_nnx.engine.cli\n"
             "print(sorted(m for m in ('av', 'soxr') if m in sys.modules))\n"
             "from whisper_nnx.engine.audio import load_audio\n"
             f"x = load_audio({str(Path(__file__).parent / 'data' / 'sample_thanks.flac')!r})\n"
             "print(sorted(m for m in ('av', 'soxr') if m in sys.modules), x.shape[0] > 0)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "['av', 'soxr'] True"]


def _swresample_mono(path: Path) -> tuple[np.ndarray, int]:
    """The file's samples as swresample converts them to float (the loader's conversion before
    it converted the common formats itself), channels averaged: the oracle of the next test."""
    with av.open(str(path)) as container:
        to_float = av.AudioResampler(format="fltp", layout=None, rate=None)
        pieces, rate = [], 0
        for frame in container.decode(container.streams.audio[0]):
            for f in [*to_float.resample(frame)]:
                pieces.append(f.to_ndarray().mean(axis=0, dtype=np.float32))
                rate = f.sample_rate
        pieces += [f.to_ndarray().mean(axis=0, dtype=np.float32) for f in to_float.resample(None)]
    return np.concatenate(pieces), rate


# formats the loader converts itself (16-, 32-bit and float, packed and planar) and one that it
# leaves to swresample (unsigned 8-bit), mono and stereo, at 16 kHz (no resampling) and not
EXTRA_ENCODINGS = [("mono16k.wav", "pcm_s16le", 16000, 1), ("s32.wav", "pcm_s32le", 16000, 2),
                   ("f32.wav", "pcm_f32le", 22050, 2), ("f64.wav", "pcm_f64le", 16000, 1),
                   ("u8.wav", "pcm_u8", 16000, 2), ("mono16k.flac", "flac", 16000, 1)]


@pytest.mark.parametrize("name", [e[0] for e in ENCODINGS] + [e[0] for e in EXTRA_ENCODINGS])
def test_samples_convert_to_float_exactly_as_swresample_converts_them(tone_files, tmp_path, name):
    from whisper_nnx.engine.audio import iter_decoded

    extra = {e[0]: e for e in EXTRA_ENCODINGS}
    if name in extra:
        _, codec, rate, channels = extra[name]
        _write(tmp_path / name, _stereo_tone(rate)[:channels], rate, codec, None)
        path = tmp_path / name
    else:
        path = tone_files[name]
    expected, rate = _swresample_mono(path)
    with av.open(str(path)) as container:
        from whisper_nnx.engine.audio import _native_mono_chunks
        stream = container.streams.audio[0]
        chunks = list(_native_mono_chunks(container, stream, path))
    assert {r for _, r in chunks} == {rate}
    got = np.concatenate([x for x, _ in chunks])
    assert got.dtype == np.float32 and np.array_equal(got, expected)  # bit for bit
    if rate == SAMPLE_RATE:  # nothing to resample: the decoded samples as they are
        assert np.array_equal(np.concatenate(list(iter_decoded(path))), expected)
