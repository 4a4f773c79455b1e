"""Token, timestamp and WER parity with openai-whisper on real weights and synthesized speech.

The corpus (tests/data/corpus/, made by tests/fixtures/make_corpus.py) is 32 clips of piper
and espeak-ng speech. Both sides get identical samples (our loader) and identical weights (the
reference model is built from our checkpoint); each (model, search) setting is decoded once
per module. Thresholds are the issue's: identical greedy tokens on >= 95% of clips, beam
search (size 5) on >= 90%; timestamps within 0.02 s where tokens agree; corpus WER no more
than 0.3 percentage points above the reference's.

The reference's results are stored in tests/data/reference/ under a key of everything they
depend on (tests/reference_store.py): a changed clip, checkpoint, setting, reference call or
version runs the reference live again. `pytest -s tests/test_corpus_parity.py` prints one table
row per setting (`s ref` 0.0 where the stored results were used); each test also writes its row
and per-clip differences to `corpus_parity.json` in its tmp_path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import whisper
from reference_store import stored, stored_or_live
from whisper.normalizers import EnglishTextNormalizer
from whisper.tokenizer import get_tokenizer

from reference import reference_model
from whisper_nnx.engine.audio import SAMPLE_RATE, load_audio, pad_or_trim
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

CORPUS = Path(__file__).parent / "data" / "corpus"
TIME_TOLERANCE = 0.02  # s, one timestamp step
MAX_WER_EXCESS = 0.003  # ours - reference, as a fraction (0.3 percentage points)
BATCH = 8
# setting -> (TranscribeOptions fields beyond language/batch_size, reference DecodingOptions
# fields beyond language/fp16, fraction of clips whose tokens must be identical)
SETTINGS = {
    "greedy": ({"temperature": 0.0}, {"beam_size": None}, 0.95),
    "beam5": ({"beam_size": 5}, {"beam_size": 5}, 0.90),
}
# base runs on 12 clips spread from the shortest to the longest, to keep the file's runtime
# on a 2-core CPU within a few minutes.
BASE_CLIPS = tuple(int(i) for i in np.linspace(0, 31, 12).round())
# (model, setting, indices into the duration-sorted corpus: None = all)
CASES = [("tiny.en", "greedy", None), ("tiny.en", "beam5", None), ("base", "greedy", BASE_CLIPS)]


@dataclasses.dataclass
class Comparison:
    """Both implementations' outputs for one (model, setting) on the corpus clips."""

    model: str
    setting: str
    names: list[str]
    texts: list[str]  # the known transcripts
    durations: list[float]  # s
    ours: list[dict]  # our result records
    ref: list[dict]  # the reference's results: {"tokens", "text"} per clip
    tokenizer: whisper.tokenizer.Tokenizer  # the reference's, for its segmentation
    seconds: dict[str, float]  # wall and CPU time of each side's decoding
    stored: bool  # the reference's results came from tests/data/reference

    def identical(self) -> list[bool]:
        return [o["tokens"] == r["tokens"] for o, r in zip(self.ours, self.ref)]

    def wer(self) -> tuple[float, float]:
        """Corpus WER of (ours, reference) against the known transcripts, normalised."""
        norm = EnglishTextNormalizer()
        truth = [norm(t) for t in self.texts]
        return (jiwer.wer(truth, [norm(o["text"]) for o in self.ours]),
                jiwer.wer(truth, [norm(r["text"]) for r in self.ref]))

    def row(self) -> dict:
        wer_ours, wer_ref = self.wer()
        return {"model": self.model, "setting": self.setting, "clips": len(self.names),
                "identical_pct": 100.0 * float(np.mean(self.identical())),
                "wer_ours_pct": 100.0 * wer_ours, "wer_ref_pct": 100.0 * wer_ref, "ref_stored": self.stored,
                **{k: round(v, 1) for k, v in self.seconds.items()}}

    def clips(self) -> dict[str, dict]:
        """Per clip: the known text, both outputs and whether their tokens are identical."""
        return {name: {"truth": truth, "ours": o["text"], "ref": r["text"], "identical": same}
                for name, truth, o, r, same in zip(self.names, self.texts, self.ours, self.ref, self.identical())}

    def differences(self) -> dict[str, dict]:
        """Per clip whose tokens differ: both texts and token lists from the first difference."""
        out = {}
        for name, o, r, same in zip(self.names, self.ours, self.ref, self.identical()):
            if not same:
                at = next((i for i, (a, b) in enumerate(zip(o["tokens"], r["tokens"])) if a != b),
                          min(len(o["tokens"]), len(r["tokens"])))
                out[name] = {"ours": o["text"], "ref": r["text"], "first_diff": at,
                             "ours_tokens": o["tokens"][at:], "ref_tokens": r["tokens"][at:]}
        return out


def reference_segments(tokens: list[int], tokenizer, duration: float) -> list[tuple[float, float, str]]:
    """(start, end, text) of one window's tokens, split as whisper.transcribe does at seek 0.

    Slices end after each pair of consecutive timestamps (plus the rest when the window ends
    in a lone timestamp); without a pair, one segment ends at the last timestamp or the clip's
    end. Segments that transcribe would blank (instantaneous or without text) are dropped.
    """
    begin = tokenizer.timestamp_begin
    is_ts = [t >= begin for t in tokens]
    pairs = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    pieces = []
    if pairs:
        slices = pairs + ([len(tokens)] if is_ts[-2:] == [False, True] else [])
        for lo, hi in zip([0] + slices[:-1], slices):
            piece = tokens[lo:hi]
            pieces.append(((piece[0] - begin) * 0.02, (piece[-1] - begin) * 0.02, piece))
    else:
        stamps = [t for t in tokens if t >= begin]
        end = (stamps[-1] - begin) * 0.02 if stamps and stamps[-1] != begin else duration
        pieces.append((0.0, end, tokens))
    segments = []
    for start, end, piece in pieces:
        text = tokenizer.decode([t for t in piece if t < tokenizer.eot])
        if start != end and text.strip():
            segments.append((start, end, text.strip()))
    return segments


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str, np.ndarray]]:
    """(name, transcript, samples [N]) per clip, shortest first so batches finish together."""
    transcripts = json.loads((CORPUS / "transcripts.json").read_text())
    clips = [(name, text, load_audio(CORPUS / name)) for name, text in sorted(transcripts.items())]
    return sorted(clips, key=lambda clip: clip[2].shape[0])


@contextlib.contextmanager
def _one_torch_thread():
    """The reference decodes with one intra-op thread: its per-token work is small tensors,
    and on a busy 2-core machine two threads mostly wait on each other (3-5x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def decoded(corpus, tiny, base):
    """decoded(model, setting, clip indices or None) -> Comparison, computed once per module."""
    loaded = {"tiny.en": tiny, "base": base}  # the session's (compiled once for the whole suite)
    references: dict[str, torch.nn.Module] = {}  # built only when a result is not stored
    features: dict[tuple[str, int], torch.Tensor] = {}  # the reference encoder's, per clip
    results: dict[tuple, Comparison] = {}

    def reference(model: str) -> torch.nn.Module:
        if model not in references:
            checkpoint = read_checkpoint(loaded[model].checkpoint_path)
            references[model] = reference_model(checkpoint.dims, checkpoint.params)
        return references[model]

    def encoded(model: str, indices: list[int]) -> torch.Tensor:
        missing = [i for i in indices if (model, i) not in features]
        for i, row in zip(missing, _encode(reference(model), [corpus[i][2] for i in missing])):
            features[model, i] = row
        return torch.stack([features[model, i] for i in indices])

    def get(model: str, setting: str, subset) -> Comparison:
        key = (model, setting, subset)
        if key not in results:
            indices = list(range(len(corpus))) if subset is None else list(subset)
            results[key] = _compare(loaded[model], model, setting, [corpus[i] for i in indices],
                                    lambda: _reference_decode(reference(model), setting, encoded(model, indices)))
        return results[key]

    return get


def _encode(ref: torch.nn.Module, clips: list[np.ndarray]) -> torch.Tensor:
    """The reference encoder's output [B, S, D] for clips of up to 30 s (batches of BATCH)."""
    rows = []
    with _one_torch_thread(), torch.no_grad():
        for lo in range(0, len(clips), BATCH):
            mel = torch.stack([whisper.log_mel_spectrogram(torch.from_numpy(pad_or_trim(audio)),
                                                           n_mels=ref.dims.n_mels)
                               for audio in clips[lo:lo + BATCH]])
            rows.append(ref.encoder(mel))
    return torch.cat(rows) if rows else torch.zeros(0)


def _reference_decode(ref: torch.nn.Module, setting: str, features: torch.Tensor) -> list[dict]:
    """{"tokens", "text"} per clip from `whisper.decode` on the reference encoder's `features`."""
    ref_fields = SETTINGS[setting][1]
    # whisper.decode takes encoder output in place of mel (it checks the trailing shape).
    ref_options = whisper.DecodingOptions(language="en", fp16=False, **ref_fields)
    # openai-whisper 20250625 cannot beam-search a batch (its cross-attention sees the
    # un-repeated audio features), so beam search runs one clip at a time.
    step = BATCH if ref_fields["beam_size"] is None else 1
    with _one_torch_thread():
        return [{"tokens": list(r.tokens), "text": r.text} for lo in range(0, features.shape[0], step)
                for r in whisper.decode(ref, features[lo:lo + step], ref_options)]


def _reference_key(ours: Transcriber, setting: str, clips) -> list:
    """Everything the reference's results depend on: how it is called, the weights, the clips."""
    return [inspect.getsource(_encode), inspect.getsource(_reference_decode), BATCH, SETTINGS[setting][1],
            Path(ours.checkpoint_path), *[audio for _, _, audio in clips]]


def _compare(ours: Transcriber, model: str, setting: str, clips, reference) -> Comparison:
    """Decode `clips` with ours; the reference's results are stored ones or `reference()`'s."""
    options = TranscribeOptions.from_kwargs(language="en", batch_size=BATCH, **SETTINGS[setting][0])
    start, cpu = time.perf_counter(), time.process_time()
    records = ours.decode_clips([audio for _, _, audio in clips], options)
    seconds = {"ours_s": time.perf_counter() - start, "ours_cpu_s": time.process_time() - cpu}
    assert all(r["error"] is None for r in records), [r["error"] for r in records]

    start, cpu = time.perf_counter(), time.process_time()
    expected, from_store = stored_or_live(f"corpus-{model}-{setting}", _reference_key(ours, setting, clips), reference)
    seconds.update(ref_s=time.perf_counter() - start, ref_cpu_s=time.process_time() - cpu)

    multilingual = ours.dims.n_vocab >= 51865  # as whisper.model.Whisper.is_multilingual
    tokenizer = get_tokenizer(multilingual, num_languages=ours.dims.n_vocab - 51765 - int(multilingual),
                              language="en", task="transcribe")
    return Comparison(model, setting, [n for n, _, _ in clips], [t for _, t, _ in clips],
                      [a.shape[0] / SAMPLE_RATE for _, _, a in clips], records, expected, tokenizer,
                      seconds, from_store)


def _report(comparison: Comparison, tmp_path: Path) -> dict:
    row = comparison.row()
    print(f"\n{'model':8} {'setting':7} {'clips':>5} {'identical':>9} {'WER ours':>8} {'WER ref':>8}"
          f" {'s ours':>7} {'s ref':>7}\n{row['model']:8} {row['setting']:7} {row['clips']:5d}"
          f" {row['identical_pct']:8.1f}% {row['wer_ours_pct']:7.2f}% {row['wer_ref_pct']:7.2f}%"
          f" {row['ours_s']:7.1f} {row['ref_s']:7.1f}")
    (tmp_path / "corpus_parity.json").write_text(json.dumps(
        {**row, "differences": comparison.differences(), "clips": comparison.clips()}, indent=2) + "\n")
    return row


@pytest.mark.slow
@pytest.mark.parametrize("model,setting,subset", CASES, ids=[f"{m}-{s}" for m, s, _ in CASES])
def test_tokens_identical_to_reference(decoded, tmp_path, model, setting, subset):
    comparison = decoded(model, setting, subset)
    row = _report(comparison, tmp_path)
    assert row["identical_pct"] >= 100 * SETTINGS[setting][2], comparison.differences()


@pytest.mark.slow
@pytest.mark.parametrize("model,setting,subset", CASES, ids=[f"{m}-{s}" for m, s, _ in CASES])
def test_timestamps_match_where_tokens_agree(decoded, model, setting, subset):
    comparison = decoded(model, setting, subset)
    checked = 0
    for name, record, result, duration, same in zip(comparison.names, comparison.ours, comparison.ref,
                                                    comparison.durations, comparison.identical()):
        if not same:
            continue
        expected = reference_segments(result["tokens"], comparison.tokenizer, duration)
        got = [(s["start"], s["end"], s["text"].strip()) for s in record["segments"] if s["text"].strip()]
        assert len(got) == len(expected), (name, got, expected)
        for (start, end, text), (ref_start, ref_end, ref_text) in zip(got, expected):
            assert abs(start - ref_start) <= TIME_TOLERANCE and abs(end - ref_end) <= TIME_TOLERANCE, \
                (name, got, expected)
            assert text == ref_text, (name, text, ref_text)
        checked += len(expected)
    assert checked > 0  # at least one agreeing clip had timed segments


@pytest.mark.slow
@pytest.mark.parametrize("model,setting,subset", CASES, ids=[f"{m}-{s}" for m, s, _ in CASES])
def test_wer_not_worse_than_reference(decoded, model, setting, subset):
    wer_ours, wer_ref = decoded(model, setting, subset).wer()
    assert wer_ours - wer_ref <= MAX_WER_EXCESS, (wer_ours, wer_ref)


@pytest.mark.slow
def test_stored_reference_results_are_what_the_reference_decodes(corpus, tiny):
    """The stored tiny.en greedy results still match their key (the clips, weights, reference
    call and versions of this checkout), and the reference run live on the first batch of
    clips here decodes exactly them."""
    results = stored("corpus-tiny.en-greedy", _reference_key(tiny, "greedy", corpus))
    assert results is not None, ("tests/data/reference/corpus-*.json are stale: rerun tests/test_corpus_parity.py "
                                 "with WHISPER_NNX_WRITE_REFERENCE=1 and commit them")
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    ref = reference_model(checkpoint.dims, checkpoint.params)
    live = _reference_decode(ref, "greedy", _encode(ref, [audio for _, _, audio in corpus[:BATCH]]))
    assert live == results[:BATCH]
    assert len(results) == len(corpus) and all(r["tokens"] and r["text"] for r in results)
