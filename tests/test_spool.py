"""engine/spool.py and the streaming VAD: disk-backed windows equal the in-memory ones bit for bit,
bad inputs fail as load_audio fails, and spooling a long file keeps memory flat."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from fixtures.make_bad_inputs import (
    cut_file,
    write_mp3,
    write_video_only,
    write_wav_float32,
    write_wav_int16,
)

from whisper_nnx.engine import vad
from whisper_nnx.engine.audio import SAMPLE_RATE, AudioDecodeError, iter_decoded, load_audio
from whisper_nnx.engine.features import WINDOW_SAMPLES, centred_signal, total_frames, window_samples
from whisper_nnx.engine.spans import floor_spans
from whisper_nnx.engine.spool import ArrayAudio, SpeechView, SpooledAudio, spool_audio

REPO = Path(__file__).resolve().parents[1]


def synth_pieces(seconds: float, rate: int, *, channels: int = 1, seed: int = 0, noise: float = 0.05,
                 piece: int = 1 << 16):
    """Tones plus white noise, float32 [C, n] pieces of at most `piece` samples (never the whole signal)."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * rate))
    for start in range(0, total, piece):
        t = np.arange(start, min(total, start + piece)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1375 * t + 0.5 * np.sin(t))
        x = tone + noise * rng.standard_normal((channels, t.size))
        x[1:] *= 0.7  # the channels differ: the down-mix is their mean
        yield x.astype(np.float32)


def write_flac_pieces(path: Path, pieces, rate: int, channels: int = 1) -> Path:
    """16-bit FLAC from float32 [C, n] pieces, encoded as they come."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout=layout)
        stream.format = "s16"
        at = 0
        for x in pieces:
            pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)  # [C, n]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T.reshape(1, -1)), format="s16",
                                               layout=layout)
            frame.sample_rate, frame.pts = rate, at
            at += x.shape[1]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 75 s 44.1 kHz stereo FLAC (resampled and down-mixed), a 7.3 s 16 kHz WAV, and two clips
    shorter than the 200-sample reflection."""
    folder = tmp_path_factory.mktemp("spool-inputs")
    rng = np.random.default_rng(1)
    return {
        "stereo.flac": write_flac_pieces(folder / "stereo.flac", synth_pieces(75.3, 44100, channels=2), 44100, 2),
        "mono.wav": write_wav_int16(folder / "mono.wav", 0.2 * rng.standard_normal(116_789), SAMPLE_RATE),
        "tiny.wav": write_wav_int16(folder / "tiny.wav", 0.2 * rng.standard_normal(150), SAMPLE_RATE),
        "one.wav": write_wav_int16(folder / "one.wav", np.full(1, 0.5), SAMPLE_RATE),
    }


def frames_to_check(n_samples: int, rng: np.random.Generator) -> list[int]:
    """Frame 0 and the reflection's other frame, window edges, the last content frames, past the end, random."""
    content = total_frames(n_samples) - 3000
    fixed = [0, 1, 2, 3, 1499, 2999, 3000, 3001, content // 2, content - 3000, content - 1, content, content + 1,
             content + 2999, content + 3000, content + 12345]
    return sorted({f for f in fixed if f >= 0} | set(rng.integers(0, content + 3000, 12).tolist()))


def assert_windows_equal(windowed, samples: np.ndarray, seed: int = 0) -> None:
    signal = centred_signal(samples)
    assert windowed.n_samples == samples.shape[0]
    for frame in frames_to_check(samples.shape[0], np.random.default_rng(seed)):
        got = windowed.window(frame)
        assert got.dtype == np.float32 and got.shape == (WINDOW_SAMPLES,)
        assert np.array_equal(got, window_samples(signal, frame)), f"frame {frame}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- iter_decoded and load_audio share one decoder --------------------------------------------


def test_iter_decoded_concatenates_to_load_audio(files):
    pieces = list(iter_decoded(files["stereo.flac"]))
    assert len(pieces) > 10 and all(p.dtype == np.float32 and p.ndim == 1 for p in pieces)
    assert max(p.size for p in pieces) < 1 << 16  # pieces are frame-sized, not the file
    assert np.array_equal(np.concatenate(pieces), load_audio(files["stereo.flac"]))


# --- SpooledAudio windows ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stereo.flac", "mono.wav", "tiny.wav", "one.wav"])
def test_spooled_windows_equal_in_memory(files, tmp_path, name):
    audio = load_audio(files[name])
    with spool_audio(files[name], tmp_path) as spooled:
        assert isinstance(spooled, SpooledAudio) and spooled.nbytes == 4 * audio.size
        assert np.array_equal(np.concatenate(list(spooled.pieces(size=40_000))), audio)
        assert_windows_equal(spooled, audio)
        # the numbers the reference frames a long file with: its samples, seconds, mel frames
        assert (spooled.n_samples, spooled.duration, spooled.audio_frames) == (
            audio.size, audio.size / SAMPLE_RATE, total_frames(audio.size) - 3000)
        assert np.array_equal(spooled.window(3000), window_samples(centred_signal(audio), 3000))


def test_every_window_of_a_short_file(files, tmp_path):
    """Every frame of the 7 s file, so no offset arithmetic hides between the sampled frames."""
    audio = load_audio(files["mono.wav"])
    signal = centred_signal(audio)
    with spool_audio(files["mono.wav"], tmp_path) as spooled:
        for frame in range(0, spooled.audio_frames + 3001, 7):
            assert np.array_equal(spooled.window(frame), window_samples(signal, frame)), frame


def test_array_audio_matches_for_every_short_length():
    rng = np.random.default_rng(2)
    for n in [0, 1, 2, 199, 200, 201, 202, 360, 401, 480_000, 480_161]:
        samples = rng.standard_normal(n).astype(np.float32)
        assert_windows_equal(ArrayAudio(samples), samples, seed=n)


def test_samples_are_clipped_and_negative_frames_refused(files, tmp_path):
    audio = load_audio(files["mono.wav"])
    with spool_audio(files["mono.wav"], tmp_path) as spooled:
        assert np.array_equal(spooled.samples(-50, 300), audio[:300])
        assert np.array_equal(spooled.samples(audio.size - 10, audio.size + 99), audio[-10:])
        assert spooled.samples(audio.size + 5, audio.size + 9).shape == (0,)
        with pytest.raises(ValueError):
            spooled.window(-1)
        with pytest.raises(ValueError):
            spooled.read_into(np.empty(10, np.float32), audio.size - 5)


def test_reads_from_threads_agree(files, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    audio = load_audio(files["stereo.flac"])
    signal = centred_signal(audio)
    frames = list(range(0, total_frames(audio.size), 211))
    with spool_audio(files["stereo.flac"], tmp_path) as spooled, ThreadPoolExecutor(4) as pool:
        windows = list(pool.map(spooled.window, frames))
    assert all(np.array_equal(w, window_samples(signal, f)) for w, f in zip(windows, frames))


def test_floor_spans_and_their_windows(files, tmp_path):
    audio = load_audio(files["stereo.flac"])
    signal = centred_signal(audio)
    with spool_audio(files["stereo.flac"], tmp_path) as spooled:
        spans = floor_spans(spooled.audio_frames)
        total = spooled.audio_frames + 3000
        assert [s.first for s in spans] == list(range(0, total, 3000))
        assert sum(s.frames for s in spans) == total and spans[-1].end == total
        frames = [s.first for s in spans] + [5, 17, 4321]
        rows = np.empty((len(frames), WINDOW_SAMPLES), np.float32)  # rows of a batch, filled in place
        for row, frame in zip(rows, frames):
            spooled.window_into(row, frame)
        expected = np.stack([window_samples(signal, f) for f in frames])
        assert np.array_equal(rows, expected)
        assert np.array_equal(np.stack([spooled.window(f) for f in frames]), expected)


# --- the temporary file's lifetime ------------------------------------------------------------


def test_spool_file_has_no_name_and_is_released(files, tmp_path):
    before = open_fds()
    spooled = spool_audio(files["mono.wav"], tmp_path)
    assert os.listdir(tmp_path) == []  # unnamed: nothing to clean up after a crash
    assert open_fds() == before + 1
    spooled.close()
    spooled.close()  # idempotent
    assert spooled.closed and open_fds() == before
    with pytest.raises(ValueError):
        spooled.window(0)
    spooled = spool_audio(files["mono.wav"], tmp_path)
    del spooled
    gc.collect()
    assert open_fds() == before


# --- errors: the same as load_audio's -------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, files) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("spool-bad")
    (folder / "empty.flac").write_bytes(b"")
    (folder / "notes.mp3").write_text("These are meeting notes, not audio.\n" * 20)
    flac = files["stereo.flac"]
    mp3 = write_mp3(folder / "whole.mp3", load_audio(files["mono.wav"]))
    nan = (0.1 * np.sin(np.arange(SAMPLE_RATE) / 10.0)).astype(np.float32)
    nan[5000] = np.nan
    return {
        "missing": folder / "nope.flac",
        "directory": folder,
        "empty": folder / "empty.flac",
        "text": folder / "notes.mp3",
        "cut_header": cut_file(flac, folder / "cut header.flac", 60),
        "cut_flac": cut_file(flac, folder / "cut half.flac", flac.stat().st_size // 2),
        "cut_mp3": cut_file(mp3, folder / "cut half.mp3", mp3.stat().st_size // 2),
        "nan": write_wav_float32(folder / "nan.wav", nan),
        "video_only": write_video_only(folder / "video.mp4"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "cut_header", "cut_flac", "cut_mp3",
                                  "nan", "video_only"])
def test_errors_match_load_audio(bad_inputs, tmp_path, case):
    with pytest.raises(AudioDecodeError) as expected:
        load_audio(bad_inputs[case])
    before = open_fds()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    with pytest.raises(AudioDecodeError) as got:
        spool_audio(bad_inputs[case], spool_dir)
    assert (got.value.path, got.value.reason) == (expected.value.path, expected.value.reason)
    assert type(got.value.__cause__) is type(expected.value.__cause__)
    assert open_fds() == before and os.listdir(spool_dir) == []  # the temporary file is gone


# --- SpeechView: the speech put back to back ------------------------------------------------------


REGION_SETS = {
    "short_first": [(1000, 1100), (5000, 90_000), (90_000, 90_000), (200_000, 1_000_000)],  # reflection spans 2
    "from_zero": [(0, 300_000), (700_000, 1_200_000)],
    "to_the_end": [(17, 18), (19, 20), (400_000, None)],  # None: the file's end
    "tiny": [(123_456, 123_500)],
    "none": [],
}


@pytest.mark.parametrize("name", list(REGION_SETS))
def test_speech_view_equals_collected_audio(files, tmp_path, name):
    audio = load_audio(files["stereo.flac"])
    regions = [(start, audio.size if end is None else end) for start, end in REGION_SETS[name]]
    collected = vad.SpeechMap(regions).collect(audio)
    with spool_audio(files["stereo.flac"], tmp_path) as spooled:
        view = SpeechView(spooled, regions)
        assert_windows_equal(view, collected)
        assert view.audio_frames == total_frames(collected.size) - 3000
        assert np.array_equal(np.concatenate([np.zeros(0, np.float32), *view.pieces(size=77_777)]), collected)
    assert_windows_equal(SpeechView(audio, regions), collected)  # over an in-memory array too


def test_speech_view_refuses_regions_outside_the_source():
    with pytest.raises(ValueError):
        SpeechView(np.zeros(100, np.float32), [(50, 101)])
    with pytest.raises(ValueError):
        SpeechView(np.zeros(100, np.float32), [(60, 50)])


# --- streaming voice activity ------------------------------------------------------------------


@pytest.fixture(scope="module")
def speechy(data_dir) -> np.ndarray:
    """Speech, digital zeros and quiet noise, 17.9 s; its length leaves 309 samples past the last frame."""
    rng = np.random.default_rng(3)
    joe, espeak = load_audio(data_dir / "sample_joe.flac"), load_audio(data_dir / "sample_espeak.flac")
    parts = [np.zeros(2 * SAMPLE_RATE, np.float32), joe, (1e-3 * rng.standard_normal(3 * SAMPLE_RATE)),
             espeak, np.zeros(3 * SAMPLE_RATE, np.float32)]
    audio = np.concatenate(parts).astype(np.float32)
    audio = audio[: len(audio) - (len(audio) % vad.FRAME) + 309]
    assert len(audio) % vad.FRAME == 309
    return audio


def ragged(audio: np.ndarray, sizes: list[int]):
    """The audio in pieces whose sizes cycle through `sizes` (0 allowed)."""
    at, i = 0, 0
    while at < len(audio):
        yield audio[at: at + sizes[i % len(sizes)]]
        at, i = at + sizes[i % len(sizes)], i + 1


@pytest.mark.parametrize("sizes", [[7919], [512], [100_000], [3, 0, 1000, 65_536, 511]])
@pytest.mark.parametrize("batch_frames", [4096, 37])
def test_streaming_probabilities_equal_whole(speechy, sizes, batch_frames):
    whole = vad.speech_probabilities(speechy, batch_frames=batch_frames)
    streamed = vad.speech_probabilities_streaming(ragged(speechy, sizes), batch_frames=batch_frames)
    assert streamed.shape == whole.shape == (len(speechy) // vad.FRAME + 1,)
    np.testing.assert_array_equal(streamed, whole)
    assert 0.9 < whole.max() and whole.min() < 0.1  # there is speech and silence in it


@pytest.mark.parametrize("n", [0, 1, 512, 37 * 512, 2 * 37 * 512, 2 * 37 * 512 + 448, 2 * 37 * 512 + 449])
def test_streaming_probabilities_at_block_edges(speechy, n):
    """Lengths at frame and batch boundaries, where the zero-padded last frame is a frame of its own."""
    audio = speechy[:n]
    whole = vad.speech_probabilities(audio, batch_frames=37)
    streamed = vad.speech_probabilities_streaming(ragged(audio, [1000]), batch_frames=37)
    np.testing.assert_array_equal(streamed, whole)


def test_streaming_regions_from_a_spool(speechy, tmp_path):
    path = write_wav_float32(tmp_path / "speechy.wav", speechy)
    audio = load_audio(path)
    options = vad.VadOptions(min_silence_duration_ms=500, speech_pad_ms=100)
    regions = vad.speech_regions(audio, options)
    assert len(regions) >= 2
    with spool_audio(path, tmp_path) as spooled:
        assert vad.speech_regions_streaming(spooled.pieces(size=48_000), options) == regions
        collected = vad.SpeechMap(regions).collect(audio)
        assert_windows_equal(SpeechView(spooled, regions), collected)


def test_streaming_refuses_multichannel_pieces():
    with pytest.raises(ValueError):
        vad.speech_probabilities_streaming([np.zeros((2, 600), np.float32)])


# --- memory ----------------------------------------------------------------------------------------

MEASURE = r"""
import json, re, sys
import av, soxr  # the engine imports its decoders on first use: here before the baseline, as all imports
from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.spans import floor_spans
from whisper_nnx.engine.spool import spool_audio

def status(key):  # kB -> bytes
    return 1024 * int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

path, how, folder = sys.argv[1:]
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (imports excluded)
base = status("VmRSS")
if how == "spool":
    with spool_audio(path, folder) as spooled:
        out = {"n_samples": spooled.n_samples, "spool": status("VmHWM") - base}
        for span in floor_spans(spooled.audio_frames):  # every window, as the log-mel floor reads them
            spooled.window(span.first)
        out["windows"] = status("VmHWM") - base
else:
    out = {"n_samples": load_audio(path).size, "load": status("VmHWM") - base}
print(json.dumps(out))
"""


def peak_increase(path: Path, how: str, folder: Path) -> dict:
    """One decode in a fresh interpreter: {n_samples, and per phase the peak RSS over the start (bytes)}.

    VmHWM after clear_refs, not getrusage: a child started by vfork + exec inherits the parent's
    peak in ru_maxrss, so the child's own growth could hide under pytest's."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), how, str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_spooling_memory_does_not_grow_with_length(tmp_path):
    """20 minutes at 8 kHz (9 MB of FLAC, 73 MiB decoded at 16 kHz): load_audio's peak grows by more
    than the decoded size; spooling's by a few MiB, the same as for 2 minutes; reading every
    floor window two at a time adds two pairs of windows (the caller's and the next), 7.3 MiB."""
    long = write_flac_pieces(tmp_path / "long.flac", synth_pieces(1200.0, 8000, noise=1e-4), 8000)
    short = write_flac_pieces(tmp_path / "short.flac", synth_pieces(120.0, 8000, noise=1e-4), 8000)
    spooled, spooled_short = peak_increase(long, "spool", tmp_path), peak_increase(short, "spool", tmp_path)
    loaded = peak_increase(long, "load", tmp_path)
    decoded = 4 * spooled["n_samples"]
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    print(f"decoded {mib(decoded)}; peak RSS increase: load_audio {mib(loaded['load'])}, spool_audio "
          f"{mib(spooled['spool'])} (2 min: {mib(spooled_short['spool'])}), + floor windows {mib(spooled['windows'])}")
    assert spooled["n_samples"] == loaded["n_samples"] == 1200 * SAMPLE_RATE
    assert loaded["load"] > decoded  # the measurement sees a whole-file copy
    assert spooled["spool"] < decoded / 8
    assert spooled["spool"] - spooled_short["spool"] < 4 * 2**20  # 10x the audio, (almost) the same peak
    assert spooled["windows"] < decoded / 4


@pytest.mark.slow
def test_a_spooled_long_file_transcribes_exactly_as_in_memory(tiny, data_dir, tmp_path):
    """The lecture's first 125 s (its 6 s pause included, which the default skips) spooled to
    disk after 60 s against held in memory: the same records in both long-form modes (measured:
    6 and 7 windows), and no spool left open afterwards."""
    from speech import write_flac

    from whisper_nnx.engine.transcribe import TranscribeOptions

    lecture = tmp_path / "lecture 125 s.flac"
    write_flac(lecture, load_audio(data_dir / "longform" / "lecture.ogg")[:int(124.8 * SAMPLE_RATE)])
    fds = len(os.listdir("/proc/self/fd"))
    for mode in ("sequential", "chunked"):
        options = dict(language="en", beam_size=None, temperature=0.0, long_form=mode)
        spooled = tiny.transcribe([lecture], TranscribeOptions.from_kwargs(**options, spool_after_s=60.0))[0]
        held = tiny.transcribe([lecture], TranscribeOptions.from_kwargs(**options))[0]
        assert spooled["error"] is None and spooled["windows"] >= 6
        assert spooled == held, mode
    assert len(os.listdir("/proc/self/fd")) <= fds
