"""Silero VAD against faster-whisper's own VAD functions (the reference), on real speech with long gaps."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from faster_whisper import vad as reference

from whisper_nnx.engine import vad
from whisper_nnx.engine.audio import SAMPLE_RATE, load_audio
from whisper_nnx.engine.vad import SpeechMap, VadOptions, VadUnavailable

SR = SAMPLE_RATE
# (what, seconds): clips and gaps of digital zeros or low noise, played back to back
LAYOUT = [
    ("zeros", 6.0),
    ("sample_joe.flac", None),
    ("noise", 8.0),
    ("sample_espeak.flac", None),
    ("zeros", 10.0),
    ("sample_joe.flac", None),
    ("noise", 5.0),
]
NOISE_RMS = 1e-3  # about -60 dBFS: a quiet room, not digital silence
OPTIONS = [
    VadOptions(),
    VadOptions(
        threshold=0.6, neg_threshold=0.2, min_speech_duration_ms=250, min_silence_duration_ms=500, speech_pad_ms=100
    ),
    # max_speech_duration_s cuts the 4 s clips: at a pause where there is one, otherwise hard
    VadOptions(threshold=0.4, max_speech_duration_s=2.0, min_silence_duration_ms=100, speech_pad_ms=30),
]


@pytest.fixture(scope="module")
def recording(data_dir):
    """Speech with long gaps [N] and where each clip and gap lies [(kind, start, end)] in samples.

    The length leaves a remainder of 100 samples past the last whole frame (see the test of the
    last frame for why that matters to the comparison with faster-whisper).
    """
    rng = np.random.default_rng(0)
    pieces, places, at = [], [], 0
    for what, seconds in LAYOUT:
        if what == "zeros":
            piece = np.zeros(int(seconds * SR), np.float32)
        elif what == "noise":
            piece = (NOISE_RMS * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        else:
            piece = load_audio(data_dir / what)
        kind = what if what in ("zeros", "noise") else "speech"
        pieces.append(piece)
        places.append((kind, at, at + len(piece)))
        at += len(piece)
    pieces.append(np.zeros((100 - at) % vad.FRAME, np.float32))
    audio = np.concatenate(pieces)
    assert len(audio) % vad.FRAME == 100
    return audio, places


def _reference_probabilities(audio: np.ndarray) -> np.ndarray:
    """faster-whisper's probabilities [N // 512 + 1], padded as its get_speech_timestamps pads."""
    padded = np.pad(audio, (0, vad.FRAME - len(audio) % vad.FRAME))
    return reference.get_vad_model()(padded)


def _reference_regions(audio: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    found = reference.get_speech_timestamps(audio, reference.VadOptions(**dataclasses.asdict(options)))
    return [(chunk["start"], chunk["end"]) for chunk in found]


def test_probabilities_match_faster_whisper(recording):
    audio, _ = recording
    ours = vad.speech_probabilities(audio)
    assert ours.shape == (len(audio) // vad.FRAME + 1,)
    np.testing.assert_allclose(ours, _reference_probabilities(audio), rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch_frames", [1, 7, 300])
def test_batches_carry_the_recurrent_state(recording, batch_frames):
    audio, _ = recording
    np.testing.assert_allclose(
        vad.speech_probabilities(audio, batch_frames=batch_frames), vad.speech_probabilities(audio), rtol=0, atol=1e-6
    )


def test_last_frame(recording):
    """faster-whisper zeroes the last 64 samples of its last frame (an in-place write through a view);
    we feed the samples. Only a remainder over 512 - 64 samples shows it, and only in that frame."""
    audio, places = recording
    _, clip_start, _ = places[1]
    cut = (clip_start + SR) // vad.FRAME * vad.FRAME + 500  # mid-speech; 52 real samples get zeroed
    audio = audio[:cut]
    ours, ref = vad.speech_probabilities(audio), _reference_probabilities(audio)
    np.testing.assert_allclose(ours[:-1], ref[:-1], rtol=0, atol=1e-4)
    assert abs(ours[-1] - ref[-1]) > 1e-3  # the one difference (if this fails, faster-whisper fixed it)
    tail = np.pad(audio[-500:], (0, 12))
    tail[-64:] = 0
    zeroed = np.concatenate([audio[:-500], tail])  # what faster-whisper's model saw
    np.testing.assert_allclose(vad.speech_probabilities(zeroed)[-2], ref[-1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "strict", "max-speech"])
def test_regions_match_faster_whisper(recording, options):
    audio, _ = recording
    ours = vad.speech_regions(audio, options)
    assert ours == _reference_regions(audio, options)
    assert len(ours) >= 3


def test_regions_match_faster_whisper_on_random_probabilities(monkeypatch):
    """The post-processing alone, on probability runs that real audio seldom gives (cuts at
    max_speech, forgiven silences, short regions), with options drawn at random."""
    rng = np.random.default_rng(1)
    for _ in range(400):
        n_samples = int(rng.integers(1, 300)) * vad.FRAME + int(rng.integers(0, vad.FRAME))
        n_frames = n_samples // vad.FRAME + 1
        probs = np.repeat(rng.random(n_frames), rng.integers(1, 8))[:n_frames].astype(np.float32)
        options = VadOptions(
            threshold=float(rng.choice([0.3, 0.5, 0.6])),
            neg_threshold=None if rng.random() < 0.5 else float(rng.uniform(0.05, 0.3)),
            min_speech_duration_ms=int(rng.choice([0, 250, 1000])),
            max_speech_duration_s=float(rng.choice([np.inf, 1.0, 2.5])),
            min_silence_duration_ms=int(rng.choice([0, 100, 500, 2000])),
            speech_pad_ms=int(rng.choice([0, 30, 400])),
        )
        monkeypatch.setattr(reference, "get_vad_model", lambda probs=probs: lambda audio: probs)
        expected = _reference_regions(np.zeros(n_samples, np.float32), options)
        assert vad.regions_from_probabilities(probs, n_samples, options) == expected, options


def test_regions_cover_the_speech_and_skip_the_gaps(recording):
    audio, places = recording
    regions = vad.speech_regions(audio)
    clips = [(start, end) for kind, start, end in places if kind == "speech"]
    gaps = [(start, end) for kind, start, end in places if kind != "speech"]
    assert len(regions) == len(clips)  # every gap is longer than min_silence (2 s)
    for (clip_start, clip_end), (start, end) in zip(clips, regions):
        assert start <= clip_start and clip_end <= end
    # padding (0.4 s) and one frame reach at most 0.5 s into a gap
    margin = SR // 2
    for gap_start, gap_end in gaps:
        for start, end in regions:
            assert end <= gap_start + margin or start >= gap_end - margin, ((start, end), (gap_start, gap_end))
    kept = sum(end - start for start, end in regions)
    assert kept <= sum(end - start for start, end in clips) + 2 * margin * len(clips)


def test_digital_silence_has_no_speech():
    silence = np.zeros(10 * SR, np.float32)
    assert vad.speech_regions(silence) == []
    assert SpeechMap([]).collect(silence).shape == (0,)
    assert SpeechMap([]).restore(1.25) == 1.25


def test_speech_map_by_hand():
    # speech at 1-2 s and 4-5 s: collected, they become 0-1 s and 1-2 s
    speech_map = SpeechMap([(SR, 2 * SR), (4 * SR, 5 * SR)])
    audio = np.arange(6 * SR, dtype=np.float32)
    np.testing.assert_array_equal(
        speech_map.collect(audio), np.concatenate([audio[SR : 2 * SR], audio[4 * SR : 5 * SR]])
    )
    assert speech_map.restore(0.0) == 1.0
    assert speech_map.restore(0.5) == 1.5
    assert speech_map.restore(1.0) == 4.0  # a start at the seam opens the second region
    assert speech_map.restore(1.0, is_end=True) == 2.0  # an end at the seam closes the first
    assert speech_map.restore(1.5) == 4.5
    assert speech_map.restore(2.0, is_end=True) == 5.0
    assert speech_map.restore(2.5) == 5.5  # past the end: the last region's shift


def test_speech_map_matches_faster_whisper(recording):
    audio, _ = recording
    regions = vad.speech_regions(audio, OPTIONS[2])
    ours = SpeechMap(regions)
    ref = reference.SpeechTimestampsMap([{"start": s, "end": e} for s, e in regions], SR)
    seams = (np.cumsum([end - start for start, end in regions]) / SR).tolist()
    collected = ours.collect(audio)
    assert len(collected) == sum(end - start for start, end in regions)
    for t in [*np.arange(0, len(collected) / SR + 1, 0.02).tolist(), *seams]:
        for is_end in (False, True):
            assert round(ours.restore(t, is_end=is_end), 2) == ref.get_original_time(t, is_end=is_end), (t, is_end)


@pytest.fixture
def fresh_session():
    """Forget the cached session before and after a test that breaks its loading."""
    vad._session.cache_clear()
    yield
    vad._session.cache_clear()


def test_missing_weights_say_how_to_install(monkeypatch, fresh_session, tmp_path):
    monkeypatch.setattr(vad, "WEIGHTS", tmp_path / "silero_vad_v6.onnx")
    with pytest.raises(VadUnavailable, match="missing: reinstall whisper-nnx"):
        vad.speech_probabilities(np.zeros(SR, np.float32))


def test_bundled_weights_match_their_checksum_and_license():
    """The packaged ONNX file is the one recorded (faster-whisper 1.2.1's silero_vad_v6.onnx),
    with Silero's MIT license beside it."""
    import hashlib

    assert vad.WEIGHTS.name == "silero_vad_v6.onnx" and vad.WEIGHTS.parent.name == "assets"
    data = vad.WEIGHTS.read_bytes()
    assert len(data) == 1_245_151
    assert hashlib.sha256(data).hexdigest() == vad.WEIGHTS_SHA256 == (
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2")
    license_text = (vad.WEIGHTS.parent / "LICENSE.silero-vad").read_text()
    assert "MIT License" in license_text and "Copyright (c) 2020-present Silero Team" in license_text
    assert vad.WEIGHTS_SHA256 in license_text


def test_bundled_weights_equal_faster_whispers_copy():
    """The same bytes as the reference's file (so its probabilities stay the reference's)."""
    from faster_whisper.utils import get_assets_path

    theirs = Path(get_assets_path()) / "silero_vad_v6.onnx"
    assert theirs.read_bytes() == vad.WEIGHTS.read_bytes()


def test_altered_weights_are_refused(monkeypatch, fresh_session, tmp_path):
    altered = tmp_path / "silero_vad_v6.onnx"
    data = bytearray(vad.WEIGHTS.read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    monkeypatch.setattr(vad, "WEIGHTS", altered)
    expected = f"damaged or altered: sha256 [0-9a-f]{{64}}, expected {vad.WEIGHTS_SHA256}: reinstall"
    with pytest.raises(VadUnavailable, match=expected):
        vad.check_available()


def test_vad_runs_without_faster_whisper(data_dir, tmp_path):
    """A fresh interpreter in which faster_whisper and ctranslate2 cannot be imported finds the
    same speech probabilities as this process (the base install does not have them)."""
    import subprocess

    script = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("faster_whisper", "ctranslate2"):
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Blocker())
import numpy as np
from whisper_nnx.engine import vad
from whisper_nnx.engine.audio import load_audio
probabilities = vad.speech_probabilities(load_audio({str(data_dir / "sample_joe.flac")!r}))
assert not any(m.split(".")[0] in ("faster_whisper", "ctranslate2") for m in sys.modules)
np.save(sys.argv[1], probabilities)
"""
    out = tmp_path / "probabilities.npy"
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    theirs = np.load(out)
    ours = vad.speech_probabilities(load_audio(data_dir / "sample_joe.flac"))
    assert theirs.shape == ours.shape and theirs.shape[0] > 100
    np.testing.assert_array_equal(theirs, ours)
    assert theirs.max() > 0.9  # speech was found


def test_missing_onnxruntime_says_how_to_install(monkeypatch, fresh_session):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(VadUnavailable, match="onnxruntime") as error:
        vad.speech_regions(np.zeros(SR, np.float32))
    assert isinstance(error.value, ValueError)


def test_rejects_multichannel_audio():
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        vad.speech_probabilities(np.zeros((2, SR), np.float32))


@pytest.mark.slow
def test_vad_decodes_fewer_windows_without_losing_words(tiny):
    """Two pieces of the long-form recording (its sentences within 0-40 s and 40-80 s) with 45 s
    of faint noise after each: with voice activity (--vad, or the default skipping of non-speech)
    both modes decode fewer windows than the reference's every-window run (measured, sequential:
    6 every window, 3-4 with --vad, 4 by default; chunked: 8, 6, 4), drop no more words, and err
    on at most one word more (sequential decoding of the noise hallucinates without it), two
    with --vad's chunks: its 160 ms regions cut chunks elsewhere, where tiny hears one word
    differently ("herbs" as "curds"), and a 4 s continuation window writes "lighthouses" as
    "light houses" (one substitution and one insertion). (Measured errors, every window / --vad
    / default: sequential 18 / 3 / 5, chunked 3 / 5 / 2; with a third piece, 80-120 s, which
    README's numbers describe: 25 / 4 / 5 and 3 / 5 / 2, for half as long again.) The chunked
    every-window run decodes at temperature 0 only: with the default fallback its noise chunks
    sample five rows at each of six temperatures (45 s of this test's 82 s alone on 2 cores) for
    the same 8 windows, 3 errors and no deletion (measured both ways)."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    from whisper_nnx.engine.transcribe import TranscribeOptions

    folder = Path(__file__).parent / "data" / "longform"
    meta = json.loads((folder / "lecture.json").read_text())
    audio = load_audio(folder / "lecture.ogg")
    noise = np.random.default_rng(0)
    parts, said = [], []
    for lo, hi in ((0, 40), (40, 80)):
        sentences = [s for s in meta["sentences"] if s["start"] >= lo and s["end"] <= hi]
        first, last = sentences[0]["start"] - 0.2, sentences[-1]["end"] + 0.2
        parts += [audio[int(first * SAMPLE_RATE):int(last * SAMPLE_RATE)],
                  (noise.standard_normal(45 * SAMPLE_RATE) * 1e-3).astype(np.float32)]
        said += [s["text"] for s in sentences]
    recording, truth = np.concatenate(parts), " ".join(said)
    normalize = EnglishTextNormalizer()
    for mode in ("sequential", "chunked"):
        plain, voiced, default = (tiny.transcribe([recording], TranscribeOptions.from_kwargs(
            long_form=mode, batch_size=8, **kwargs))[0]
            for kwargs in ({"skip_non_speech_s": None, **({"temperature": 0.0} if mode == "chunked" else {})},
                           {"vad": True}, {}))
        scores = [jiwer.process_words(normalize(truth), normalize(r["text"])) for r in (plain, voiced, default)]
        errors = [m.substitutions + m.deletions + m.insertions for m in scores]
        print(mode, "windows", plain["windows"], voiced["windows"], default["windows"], "WER", [m.wer for m in scores])
        assert voiced["windows"] < plain["windows"] and scores[1].deletions <= scores[0].deletions
        assert errors[1] <= errors[0] + (2 if mode == "chunked" else 1) and scores[1].wer < 0.03
        # The default skips the gaps (voice activity finds them) and decodes the speech in place.
        assert default["windows"] < plain["windows"] and scores[2].deletions <= scores[0].deletions
        assert errors[2] <= errors[0] + 1 and scores[2].wer < 0.03
        assert all(0 <= s["start"] <= s["end"] <= recording.shape[0] / SAMPLE_RATE for s in voiced["segments"])
        # Times are the recording's own: no segment starts inside the first noise gap.
        gap = (parts[0].shape[0] / SAMPLE_RATE + 1, (parts[0].shape[0] + parts[1].shape[0]) / SAMPLE_RATE - 1)
        assert not [s for s in voiced["segments"] if gap[0] < s["start"] < gap[1]]
