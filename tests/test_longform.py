"""Long-form decoding: window features, per-row prompts, stitching, and both modes against the
reference's `whisper.transcribe` on a 3.5-minute synthesized recording (tests/data/longform,
made by tests/fixtures/make_longform.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import whisper
from whisper.normalizers import EnglishTextNormalizer

from reference import reference_model
from whisper_nnx.engine import features
from whisper_nnx.engine.audio import N_SAMPLES, load_audio
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.decode.options import DecodeOptions
from whisper_nnx.engine.decode.prompts import initial_tokens
from whisper_nnx.engine.segments import Segment
from whisper_nnx.engine.spans import Span, chunk_starts, speech_chunks
from whisper_nnx.engine.stitching import stitch_chunks
from whisper_nnx.engine.transcribe import TranscribeOptions

LECTURE = Path(__file__).parent / "data" / "longform"
_normalize = EnglishTextNormalizer()


def _wer(truth: str, hypothesis: str) -> float:
    return jiwer.wer(_normalize(truth), _normalize(hypothesis))


def test_window_features_equal_slices_of_the_whole_file_mel(data_dir):
    """Any window recomputed from its samples equals the reference's whole-file mel sliced at
    that frame and zero-padded (its pad_or_trim of a short last segment)."""
    joe = load_audio(data_dir / "sample_joe.flac")
    audio = np.concatenate([joe, joe[:50000], joe])
    ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), 80, padding=N_SAMPLES).numpy()
    signal = features.centred_signal(audio)
    frames = features.total_frames(audio.shape[0])
    assert frames == ref.shape[1]
    maxima = [float(features.window_log_mel_max(features.window_samples(signal, f)[None],
                                            np.array([min(3000, frames - f)]), n_mels=80)[0])
              for f in range(0, frames, 3000)]
    top = max(maxima)
    content = frames - 3000
    for seek in (0, 123, 517, content - 7):
        size = min(3000, content - seek)
        ours = np.asarray(features.window_log_mel(features.window_samples(signal, seek)[None], np.array([size]),
                                                  np.array([top], np.float32), n_mels=80))[0]
        expected = whisper.pad_or_trim(torch.from_numpy(ref[:, seek:seek + size]), 3000).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_chunk_starts_by_hand():
    assert chunk_starts(100, 5.0) == [0]
    assert chunk_starts(3000, 5.0) == [0]
    assert chunk_starts(3001, 5.0) == [0, 2000]  # 20 s steps: 30 s chunks, 5 s stride each side
    assert chunk_starts(7000, 5.0) == [0, 2000, 4000]
    assert chunk_starts(7000, 0.0) == [0, 3000, 6000]


def test_speech_chunks_never_overlap_when_regions_share_a_frame():
    """Two regions 5 samples apart round into the same 10 ms frame (start floored, end rounded
    up); the chunks must still be disjoint, or stitching takes them for overlapping chunks and
    cuts one of them at the first pair of words the two share."""
    hop = 160
    regions = [(0, 25 * 16000 + 5), (25 * 16000 + 10, 50 * 16000), (50 * 16000 + 100, 52 * 16000)]
    chunks = speech_chunks(regions, 5200)
    assert chunks == [Span(0, 2501), Span(2501, 5200)]
    for chunk, after in zip(chunks, chunks[1:]):
        assert after.first >= chunk.end
    # a region inside the previous chunk's last frame still yields frames of its own
    assert speech_chunks([(0, 10 * hop + 5), (10 * hop + 20, 3200 * hop)], 3300) == \
        [Span(0, 11), Span(11, 3011), Span(3011, 3200)]


def _segment(tokenizer, start: float, end: float, text: str) -> Segment:
    ts = tokenizer.timestamp_begin
    tokens = [ts] + tokenizer.encode(text) + [ts + 1]
    return Segment(start, end, text, tokens)


def test_stitching_cuts_in_the_middle_of_the_agreed_words(tiny_tokenizer):
    tok = tiny_tokenizer
    left = [_segment(tok, 0.0, 12.0, " one two three four five"),
            _segment(tok, 12.0, 29.0, " six seven eight nine ten")]
    # The right chunk (from 20 s) starts mid-sentence with a misheard first word.
    right = [_segment(tok, 20.0, 27.0, " mix Seven eight nine ten."), _segment(tok, 27.0, 40.0, " eleven twelve")]
    out = stitch_chunks([left, right], [(0.0, 30.0), (20.0, 50.0)], tok)
    assert "".join(s.text for s in out) == " one two three four five six seven eight nine ten. eleven twelve"
    # The agreed run is "seven eight nine ten": left keeps "seven eight", right gives "nine ten."; the
    # two cut segments become one spanning both.
    assert [(s.start, s.end) for s in out] == [(0.0, 12.0), (12.0, 29.0), (29.0, 40.0)]


def test_stitching_without_agreement_cuts_at_the_middle_of_the_overlap(tiny_tokenizer):
    tok = tiny_tokenizer
    left = [_segment(tok, 0.0, 18.0, " alpha beta"), _segment(tok, 18.0, 24.0, " gamma"),
            _segment(tok, 26.0, 29.0, " noise")]
    right = [_segment(tok, 20.0, 23.0, " gamut"), _segment(tok, 26.0, 30.0, " delta"), _segment(tok, 30.0, 45.0, " pi")]
    out = stitch_chunks([left, right], [(0.0, 30.0), (20.0, 50.0)], tok)
    # Overlap 20-30 s, middle 25 s: segments are kept by which side of it their middle falls.
    assert [s.text for s in out] == [" alpha beta", " gamma", " delta", " pi"]


@pytest.mark.slow
def test_mixed_prompt_lengths_in_one_batch_decode_as_alone(tiny, data_dir):
    """Rows with prompts of different lengths (left-padded in one batch) give the tokens and
    scores each gets alone, greedy and beam."""
    tok = tiny.tokenizer
    audio = np.stack([np.pad(load_audio(data_dir / n), (0, N_SAMPLES))[:N_SAMPLES]
                      for n in ("sample_joe.flac", "sample_espeak.flac", "sample_joe.flac")])
    mel = tiny.mel(audio)
    prompts = [initial_tokens(tok, DecodeOptions.from_kwargs(prompt=p), 448)
               for p in (None, "A short prompt.", "A much longer prompt about foxes, dogs, tickets and Stella, "
                                                  "who is asked to bring them along to the station today.")]
    assert len({len(p) for p in prompts}) == 3
    for options in (DecodeOptions.from_kwargs(temperature=0.0),
                    DecodeOptions.from_kwargs(temperature=0.0, beam_size=3)):
        together = tiny.decoder.decode(mel, tok, prompts, options)
        for row in range(3):
            alone = tiny.decoder.decode(mel[row:row + 1], tok, [prompts[row]], options)[0]
            assert together[row].tokens == alone.tokens
            assert abs(together[row].sum_logprob - alone.sum_logprob) < 1e-3
            assert abs(together[row].no_speech_prob - alone.no_speech_prob) < 1e-5


@pytest.mark.slow
def test_sampled_rows_draw_the_same_tokens_in_any_batch(tiny, data_dir):
    """Sampling (fallback temperatures, best-of) follows each row's own seed, not its place in
    the batch: a window retried in another batch, or by another process, draws the same."""
    tok = tiny.tokenizer
    audio = np.stack([np.pad(load_audio(data_dir / n), (0, N_SAMPLES))[:N_SAMPLES]
                      for n in ("sample_joe.flac", "sample_espeak.flac", "sample_joe.flac")])
    mel = tiny.mel(audio)
    options = DecodeOptions.from_kwargs(temperature=1.0, best_of=2)
    prompt = list(tok.sot_sequence)
    together = tiny.decoder.decode(mel, tok, [prompt] * 3, options, seeds=[11, 22, 33])
    alone = tiny.decoder.decode(mel[1:2], tok, [prompt], options, seeds=[22])[0]
    assert together[1].tokens == alone.tokens and abs(together[1].sum_logprob - alone.sum_logprob) < 1e-3
    # Same audio, different seeds: different draws at temperature 1.
    assert together[0].tokens != together[2].tokens


@pytest.mark.slow
def test_files_batched_together_equal_files_alone(tiny, data_dir):
    """Cross-file batching: files advancing their own seek side by side (sequential) or sharing
    chunk batches give each file exactly what it gets alone."""
    joe, espeak = load_audio(data_dir / "sample_joe.flac"), load_audio(data_dir / "sample_espeak.flac")
    gap = lambda s: np.zeros(int(s * 16000), np.float32)
    long_file = np.concatenate([joe, gap(0.7), espeak, gap(1.3), espeak, gap(0.4), joe, gap(2.0), joe, espeak,
                                gap(0.5), joe])  # about 40 s
    files = [long_file, joe, np.concatenate([espeak, gap(3.0), joe]), espeak]
    for mode in ("sequential", "chunked"):
        options = TranscribeOptions.from_kwargs(temperature=0.0, long_form=mode, batch_size=4)
        together = tiny.transcribe(files, options)
        alone = [tiny.transcribe([f], options)[0] for f in files]
        assert [r["segments"] for r in together] == [r["segments"] for r in alone], mode
        assert together[0]["windows"] >= 2


@pytest.fixture(scope="module")
def lecture_runs(tiny):
    """The recording through the reference's transcribe and through both of our modes."""
    truth = json.loads((LECTURE / "lecture.json").read_text())
    audio = load_audio(LECTURE / "lecture.ogg")
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    torch.set_num_threads(2)
    ref = whisper.transcribe(reference_model(checkpoint.dims, checkpoint.params), audio, language="en",
                             temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), fp16=False)
    # sequential as the reference runs (every window decoded); chunked with the defaults
    ours = {mode: tiny.transcribe([audio], TranscribeOptions.from_kwargs(long_form=mode, batch_size=8, **pin))[0]
            for mode, pin in (("sequential", {"skip_non_speech_s": None}), ("chunked", {}))}
    ours["sequential, default"] = tiny.transcribe([audio], TranscribeOptions.from_kwargs(batch_size=8))[0]
    ours["sequential, text only"], ours["chunked, text only"] = (tiny.transcribe([audio], TranscribeOptions.from_kwargs(
        batch_size=8, long_form=mode, without_timestamps=True))[0] for mode in ("sequential", "chunked"))
    return truth, ref, ours


@pytest.mark.slow
def test_sequential_long_form_equals_the_reference(lecture_runs):
    truth, ref, ours = lecture_runs
    seq = ours["sequential"]
    assert seq["error"] is None and seq["windows"] >= 7
    assert seq["text"] == ref["text"].strip()
    expected = [(s["start"], s["end"], s["text"]) for s in ref["segments"] if s["text"]]
    got = [(s["start"], s["end"], s["text"]) for s in seq["segments"]]
    assert [g[2] for g in got] == [e[2] for e in expected]
    assert max(abs(g[i] - e[i]) for g, e in zip(got, expected) for i in (0, 1)) < 0.021
    assert _wer(truth["text"], seq["text"]) <= _wer(truth["text"], ref["text"]) + 0.003


@pytest.mark.slow
def test_chunked_text_only_is_as_good_as_sequential(lecture_runs):
    """Text only, chunked mode loses no more words than sequential mode (measured: 1.4% against
    7.4%, the reference's text-only seek loop losing what a window's decode leaves out; text-only
    chunks stitched on text alone made 21%)."""
    truth, _, ours = lecture_runs
    chunked, sequential = _wer(truth["text"], ours["chunked, text only"]["text"]), \
        _wer(truth["text"], ours["sequential, text only"]["text"])
    print(f"text only: chunked {chunked:.2%}, sequential {sequential:.2%}")
    assert chunked <= sequential + 0.005
    assert chunked <= _wer(truth["text"], ours["sequential"]["text"]) + 0.005


@pytest.mark.slow
def test_skipping_the_pause_keeps_the_reference_wer(lecture_runs):
    """The default skips the recording's 6 s pause (no fresh prompt after it: the gap is under
    30 s); its WER stays within 0.5 points of the reference's run."""
    truth, ref, ours = lecture_runs
    default = ours["sequential, default"]
    gap = truth["silence"]
    assert not [s for s in default["segments"] if s["start"] > gap["start"] + 0.5 and s["end"] < gap["end"] - 0.5]
    assert _wer(truth["text"], default["text"]) <= _wer(truth["text"], ref["text"]) + 0.005


@pytest.mark.slow
def test_chunked_long_form_is_within_one_point_of_sequential(lecture_runs):
    truth, _, ours = lecture_runs
    seq, chunked = ours["sequential"], ours["chunked"]
    seq_wer, chunked_wer = _wer(truth["text"], seq["text"]), _wer(truth["text"], chunked["text"])
    print(f"lecture WER: sequential {seq_wer:.2%}, chunked {chunked_wer:.2%}")
    assert chunked_wer <= seq_wer + 0.01
    starts = [s["start"] for s in chunked["segments"]]
    assert starts == sorted(starts) and all(s["end"] >= s["start"] for s in chunked["segments"])
    assert chunked["segments"][-1]["end"] <= truth["duration_s"] + 0.5
    # Nothing is said in the 6 s gap: no segment lies inside it.
    gap = truth["silence"]
    assert not [s for s in chunked["segments"] if s["start"] > gap["start"] + 0.5 and s["end"] < gap["end"] - 0.5]


def test_chunked_text_only_decodes_with_timestamps_and_warns_only_with_vad(caplog):
    """Overlapping chunks decode with timestamps even when text only is asked for (stitching and
    continuation need them); chunks cut at pauses (vad) decode text only and cannot continue a
    window that stops early: that case says so."""
    with caplog.at_level("WARNING"):
        stride = TranscribeOptions.from_kwargs(long_form="chunked", without_timestamps=True)
        sequential = TranscribeOptions.from_kwargs(long_form="sequential", without_timestamps=True)
        assert not [r for r in caplog.records if "without timestamps" in r.getMessage()]
        voiced = TranscribeOptions.from_kwargs(long_form="chunked", without_timestamps=True, vad=True)
    assert [r for r in caplog.records if "chunked long-form with vad and without timestamps" in r.getMessage()]
    assert stride.decode.rules.without_timestamps and not stride.as_decoded().decode.rules.without_timestamps
    assert stride.as_decoded().decode.search == stride.decode.search
    assert sequential.as_decoded() is sequential and voiced.as_decoded() is voiced


def test_seek_clips_follow_the_reference():
    from whisper_nnx.engine.spans import seek_clips

    assert seek_clips(None, 5000) == [Span(0, 5000)]
    assert seek_clips((), 5000) == [Span(0, 5000)]
    assert seek_clips((1.0, 2.5, 10.0), 5000) == [Span(100, 250), Span(1000, 5000)]
    from whisper_nnx.engine.options import TranscribeOptions

    assert TranscribeOptions.from_kwargs(clip_timestamps="3,4.5").long_form.clip_timestamps == (3.0, 4.5)
    with pytest.raises(ValueError, match="sequential"):
        TranscribeOptions.from_kwargs(clip_timestamps="3,4", long_form="chunked")
    with pytest.raises(ValueError, match="vad"):
        TranscribeOptions.from_kwargs(clip_timestamps="3,4", vad=True)


@pytest.mark.slow
def test_clip_timestamps_equal_the_reference(tiny):
    """Only the given spans of the recording (one ending mid-window, one running to the end),
    through the reference's transcribe(clip_timestamps=...) and ours: the same segments."""
    audio = load_audio(LECTURE / "lecture.ogg")
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    torch.set_num_threads(2)
    clips = "12.5,47,150"
    ref = whisper.transcribe(reference_model(checkpoint.dims, checkpoint.params), audio, language="en",
                             temperature=0.0, fp16=False, clip_timestamps=clips)
    ours = tiny.transcribe([audio], TranscribeOptions.from_kwargs(temperature=0.0, clip_timestamps=clips,
                                                                  skip_non_speech_s=None))[0]
    expected = [(s["start"], s["end"], s["text"]) for s in ref["segments"] if s["text"]]
    got = [(s["start"], s["end"], s["text"]) for s in ours["segments"]]
    assert [g[2] for g in got] == [e[2] for e in expected] and len(got) >= 5
    assert max(abs(g[i] - e[i]) for g, e in zip(got, expected) for i in (0, 1)) < 0.021
    assert got[0][0] >= 12.5 - 0.021 and all(not (47 + 0.5 < g[0] < 150 - 0.5) for g in got)


@pytest.mark.slow
def test_a_cpu_transcriber_never_runs_two_batches_on_the_device_at_once(tiny, data_dir):
    """Two calls of one compiled encoder at once give some rows other outputs on XLA's CPU backend
    (tools/cpu_concurrency_check.py; a clip's transcript changed with the timing): batches still go
    through two device threads, so the next one's host work overlaps, but their device programs run
    one at a time, and the transcripts equal those of a run with one batch in flight."""
    import copy
    import threading
    import time

    class Watched:
        def __init__(self, decoder):
            self.inner, self.inside, self.most, self.threads = decoder, 0, 0, set()
            self.count = threading.Lock()

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def decode(self, *args, **kwargs):
            with self.count:
                self.inside += 1
                self.most = max(self.most, self.inside)
                self.threads.add(threading.current_thread().name)
            time.sleep(0.05)  # a wider window for a second batch to come in
            try:
                return self.inner.decode(*args, **kwargs)
            finally:
                with self.count:
                    self.inside -= 1

    # two clips that decode at temperature 0 (sample_thanks.flac falls back through every temperature:
    # 45 s of decoding on two cores, which this test does not need), three batches of two
    paths = [str(data_dir / name) for name in ("sample_joe.flac", "sample_espeak.flac")] * 3
    watched = copy.copy(tiny)
    watched.decoder = Watched(tiny.decoder)
    got = watched.transcribe(paths, batch_size=2)
    serial = copy.copy(tiny)
    serial.batches_in_flight = 1
    expected = serial.transcribe(paths, batch_size=2)
    assert watched.batches_in_flight == 2 and len(watched.decoder.threads) == 2  # two device threads used
    assert watched.decoder.most == 1  # never two batches' device programs at once
    assert [r["text"] for r in got] == [r["text"] for r in expected] and all(r["error"] is None for r in got)
