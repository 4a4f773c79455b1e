"""Word-level timestamps on the host: alignment matrix -> timed words -> words of each segment.

The device (`alignment.py`) turns one window's cross-attention into `matrix` [N, S]: rows are
the decoder positions [<|notimestamps|>, *text_tokens] (N = len(text_tokens) + 1; the start
sequence before and the <|endoftext|> row after are cropped off, as the reference's
`matrix[len(sot_sequence):-1]`), columns the window's audio positions (50 per second).
Here, as in the reference's `whisper/timing.py`:

    dynamic time warping of -matrix -> the audio position where each row starts
    -> words (`Tokenizer.split_to_word_tokens`) start and end where their first token and the
    next word's first token start (`word_timings`)
    -> punctuation merged into its word, long words cut, words shared out to the segments
    by their token counts, segment edges moved onto their words (`assign_words`).

Shapes: N text rows, M audio positions, L steps of the warping path.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .audio import TOKENS_PER_SECOND
from .decode.tokenizer import Tokenizer
from .segments import Segment

PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # joined onto the word after them
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # joined onto the word before them
SENTENCE_END_MARKS = ".。!！?？"
MAX_MEDIAN_DURATION = 0.7  # seconds; the typical word length is capped at this


@dataclasses.dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the start of the window
    end: float
    probability: float  # mean probability of its tokens


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through the cost matrix x [N, M] -> (rows [L], columns [L]).

    The reference's `dtw_cpu` + `backtrace`, bit for bit: accumulated costs are float32 (each
    step adds the float64 cost, then rounds), ties go to the step that advances the column
    unless the diagonal or the row step is strictly cheapest. Cell (i, j) depends on
    (i-1, j-1), (i-1, j) and (i, j-1), so each anti-diagonal i + j is computed at once from
    the two before it: `cost[d, i]` holds the accumulated cost of cell (i, d - i), 1-based.
    """
    n, m = x.shape
    skewed = _skew(np.asarray(x, np.float64))  # [N + M - 1, N]: skewed[d - 2, i - 1] = x[i-1, d-i-1]
    cost = np.full((n + m + 1, n + 1), np.inf, np.float32)
    cost[0, 0] = 0
    diagonal = np.zeros((n + m + 1, n + 1), bool)  # the step into (i, d - i) was (i-1, j-1)
    vertical = np.zeros((n + m + 1, n + 1), bool)  # the step was (i-1, j); else (i, j-1)
    step = np.empty(n, np.float64)
    for d in range(2, n + m + 1):
        c0, c1, c2 = cost[d - 2, :-1], cost[d - 1, :-1], cost[d - 1, 1:]  # each [N], rows 1..N
        take0 = c0 < np.minimum(c1, c2)
        take1 = c1 < np.minimum(c0, c2)
        np.add(skewed[d - 2], np.where(take0, c0, np.where(take1, c1, c2)), out=step)
        cost[d, 1:] = step  # cells outside the matrix add +inf and stay unreachable
        diagonal[d, 1:] = take0
        vertical[d, 1:] = take1
    return _backtrace(diagonal, vertical, n, m)


def _skew(x: np.ndarray) -> np.ndarray:
    """x [N, M] -> [N + M - 1, N] with row k holding x[i, k - i] for each i (+inf off the matrix)."""
    n, m = x.shape
    padded = np.full((n, m + n), np.inf)
    padded[:, :m] = x
    # Rereading the rows of length m + n as rows of length m + n - 1 shifts row i right by i.
    sheared = padded.ravel()[: n * (m + n - 1)].reshape(n, m + n - 1)
    return np.ascontiguousarray(sheared.T)


def _backtrace(diagonal: np.ndarray, vertical: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk the recorded steps back from cell (N, M) to (0, 0) -> 0-based (rows [L], columns [L])."""
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if i == 0:  # the reference's edges; row 0 is never reached before (0, 0) with finite costs
            j -= 1
        elif j == 0:
            i -= 1
        elif diagonal[i + j, i]:
            i, j = i - 1, j - 1
        elif vertical[i + j, i]:
            i -= 1
        else:
            j -= 1
    rows, columns = np.array(path[::-1], np.int64).T
    return rows, columns


def word_timings(matrix: np.ndarray, text_tokens: list[int], text_token_probs: list[float],
                 tokenizer: Tokenizer) -> list[WordTiming]:
    """Timed words of one window: the reference's `find_alignment` from its DTW on.

    matrix [N, M]: rows [<|notimestamps|>, *text_tokens] (N = len(text_tokens) + 1), columns
    the window's first num_frames // 2 audio positions (see the module docstring);
    text_token_probs [N - 1]: the probability of each text token. Times are seconds from the
    start of the window. Returns [] where the reference does: no text tokens, or only one
    word (counting <|endoftext|>, which `split_to_word_tokens` always keeps apart).
    """
    if not text_tokens:
        return []
    if matrix.shape[0] != len(text_tokens) + 1:
        raise ValueError(f"matrix has {matrix.shape[0]} rows, expected {len(text_tokens) + 1} "
                         "(<|notimestamps|> and the text tokens)")
    rows, columns = dtw(-np.asarray(matrix))
    words, tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(tokens) <= 1:  # only <|endoftext|>
        return []
    boundaries = np.concatenate([[0], np.cumsum([len(t) for t in tokens[:-1]])])  # [W + 1]
    starts_row = np.concatenate([[True], np.diff(rows) != 0])  # the path's first step in each row
    row_times = columns[starts_row] / TOKENS_PER_SECOND  # [N] seconds
    return [
        WordTiming(word, word_tokens, float(row_times[a]), float(row_times[b]),
                   float(np.mean(text_token_probs[a:b])))
        for word, word_tokens, a, b in zip(words, tokens, boundaries[:-1], boundaries[1:])
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """Join opening punctuation onto the next word and closing punctuation onto the previous,
    in place; the emptied entries stay (word "", no tokens) so token counts still line up.
    Membership is the reference's substring test (`"" in appended` holds)."""
    target = len(alignment) - 1
    for i in range(len(alignment) - 2, -1, -1):
        mark = alignment[i]
        if mark.word.startswith(" ") and mark.word.strip() in prepended:
            _move(mark, alignment[target], before=True)
        else:
            target = i
    target = 0
    for i in range(1, len(alignment)):
        mark = alignment[i]
        if not alignment[target].word.endswith(" ") and mark.word in appended:
            _move(mark, alignment[target], before=False)
        else:
            target = i


def _move(mark: WordTiming, word: WordTiming, before: bool) -> None:
    """Put `mark`'s text and tokens before or after `word`'s, leaving `mark` empty."""
    if before:
        word.word, word.tokens = mark.word + word.word, mark.tokens + word.tokens
    else:
        word.word, word.tokens = word.word + mark.word, word.tokens + mark.tokens
    mark.word, mark.tokens = "", []


def assign_words(segments: list[Segment], alignment: list[WordTiming], eot: int, time_offset: float,
                 last_speech_timestamp: float, prepended: str = PREPEND_PUNCTUATIONS,
                 appended: str = APPEND_PUNCTUATIONS) -> tuple[list[list[dict]], float]:
    """The reference's `add_word_timestamps` after `find_alignment`, for one window.

    segments: the window's segments (times absolute; their tokens below `eot` are the text);
    alignment: `word_timings` of all their text tokens, in order (changed in place);
    time_offset: the window's start in seconds. Returns the words of each segment, as dicts
    {word, start, end, probability} with absolute times rounded to 10 ms, and the end of the
    last segment that has words (the new `last_speech_timestamp`). A segment with words gets
    its start and end moved onto them, in place, unless its first or last word is implausibly
    long, in which case that word is shortened instead.
    """
    durations = np.array([w.end - w.start for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(MAX_MEDIAN_DURATION, float(np.median(durations))) if len(durations) else 0.0
    if len(durations):
        _cut_at_sentence_ends(alignment, 2 * median)
    merge_punctuations(alignment, prepended, appended)
    result, next_word = [], 0
    for segment in segments:
        n_text = sum(t < eot for t in segment.tokens)
        words, taken = [], 0
        while next_word < len(alignment) and taken < n_text:
            timing = alignment[next_word]
            if timing.word:
                words.append(dict(word=timing.word, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            taken += len(timing.tokens)
            next_word += 1
        if words:
            _fit_edges(segment, words, median, last_speech_timestamp)
            last_speech_timestamp = segment.end
        result.append(words)
    return result, last_speech_timestamp


def _cut_at_sentence_ends(alignment: list[WordTiming], max_duration: float) -> None:
    """A too-long sentence-end mark ends max_duration after its start; a too-long word after
    one starts max_duration before its end (the first word is left alone)."""
    for previous, word in zip(alignment, alignment[1:]):
        if word.end - word.start > max_duration:
            if word.word in SENTENCE_END_MARKS:
                word.end = word.start + max_duration
            elif previous.word in SENTENCE_END_MARKS:
                word.start = word.end - max_duration


def _fit_edges(segment: Segment, words: list[dict], median: float, last_speech: float) -> None:
    """Shorten long first words after a pause, then move the segment's edges onto its words or,
    where the first (last) word reaches over 0.5 s beyond the edge, that word onto the edge."""
    first, last, max_duration = words[0], words[-1], 2 * median
    after_pause = first["end"] - last_speech > 4 * median
    if after_pause and (first["end"] - first["start"] > max_duration
                        or (len(words) > 1 and words[1]["end"] - first["start"] > 2 * max_duration)):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
            first["end"] = words[1]["start"] = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
        first["start"] = max(0, first["end"] - max_duration)
    if first["end"] > segment.start and first["start"] < segment.start - 0.5:
        first["start"] = max(0, min(first["end"] - median, segment.start))
    else:
        segment.start = first["start"]
    if last["start"] < segment.end and last["end"] > segment.end + 0.5:
        last["end"] = max(last["start"] + median, segment.end)
    else:
        segment.end = last["end"]
