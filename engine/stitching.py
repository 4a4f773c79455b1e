"""Stitching the transcripts of overlapping chunks into one (chunked long-form).

Chunk k and chunk k+1 both hear the overlap between them (10 s with the default stride). The
words each decoded there are aligned on a normalised spelling (lower case, letters and digits
only) and the longest run both agree on is found; the transcript takes chunk k's words up to
the middle of that run and chunk k+1's words after it. The middle of an agreed run is as far
as possible from both chunks' edges, where a chunk hears a word cut in half. When the two
chunks share no run of two words (one heard silence, or both are unsure), the cut falls at
the middle of the overlap by segment time instead.

Segments keep their timestamps; the two segments a cut goes through become one segment.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Optional

from .decode.tokenizer import Tokenizer
from .segments import Segment

_NOT_WORD = re.compile(r"[^\w]+")


@dataclasses.dataclass
class _Word:
    key: str  # normalised spelling, for alignment
    tokens: list[int]
    chunk: int
    segment: int  # index into its chunk's segments
    first: bool = False  # the first word of its segment
    last: bool = False  # the last word of its segment
    timing: Optional[dict] = None  # {word, start, end, probability} when the chunk has word timestamps


def _words(segments: list[Segment], chunk: int, tokenizer: Tokenizer) -> list[_Word]:
    """Text tokens of a chunk's segments grouped into words (a word starts at a leading space)."""
    words: list[_Word] = []
    for index, segment in enumerate(segments):
        mine: list[_Word] = []
        if segment.words:  # word timestamps: align on the timed words themselves
            mine = [_Word(_NOT_WORD.sub("", w["word"]).lower(), [], chunk, index, timing=w) for w in segment.words]
            mine[0].first, mine[-1].last = True, True
            words += mine
            continue
        for token in segment.tokens:
            if token >= tokenizer.eot:  # timestamps and other special tokens
                continue
            if not mine or tokenizer.decode([token]).startswith(" "):
                mine.append(_Word("", [], chunk, index))
            mine[-1].tokens.append(token)
        for word in mine:
            word.key = _NOT_WORD.sub("", tokenizer.decode(word.tokens)).lower()
        if mine:
            mine[0].first, mine[-1].last = True, True
        words += mine
    return words


def _midpoint(segment: Segment) -> float:
    return (segment.start + segment.end) / 2


def _join(left: list[_Word], right: list[_Word], chunks: list[list[Segment]],
          overlap: tuple[float, float]) -> list[_Word]:
    """left (words so far) + right (the next chunk's words), cut once inside `overlap`."""
    seg = lambda w: chunks[w.chunk][w.segment]
    # Only words whose segments reach into the overlap are candidates for the cut.
    lo = next((i for i, w in enumerate(left) if seg(w).end > overlap[0]), len(left))
    hi = next((i for i in range(len(right) - 1, -1, -1) if seg(right[i]).start < overlap[1]), -1) + 1
    a, b = [w.key for w in left[lo:]], [w.key for w in right[:hi]]
    match = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    if match.size >= 2:
        half = match.size // 2
        return left[:lo + match.a + half] + right[match.b + half:]
    middle = (overlap[0] + overlap[1]) / 2
    return [w for w in left if _midpoint(seg(w)) < middle] + [w for w in right if _midpoint(seg(w)) >= middle]


def stitch_chunks(chunks: list[list[Segment]], bounds: list[tuple[float, float]],
                  tokenizer: Tokenizer) -> list[Segment]:
    """Segments of each chunk (absolute times) and each chunk's (start, end) -> one transcript."""
    words: list[_Word] = []
    for k, segments in enumerate(chunks):
        mine = _words(segments, k, tokenizer)
        if k == 0 or bounds[k][0] >= bounds[k - 1][1]:  # chunks cut at pauses do not overlap
            words = words + mine
        else:
            words = _join(words, mine, chunks, (bounds[k][0], bounds[k - 1][1]))
    out: list[Segment] = []
    previous: _Word | None = None
    for word in words:
        source = chunks[word.chunk][word.segment]
        if previous is not None and (word.chunk, word.segment) == (previous.chunk, previous.segment):
            pass
        elif previous is not None and not previous.last and not word.first:
            out[-1].end = max(out[-1].end, source.end)  # the cut ran through both segments: they become one
        else:
            start = max(source.start, out[-1].end) if out else source.start
            out.append(Segment(start, max(start, source.end), "", [], dict(source.stats), seek=source.seek))
        out[-1].tokens += word.tokens
        if word.timing is not None:
            out[-1].words.append(word.timing)
        previous = word
    for segment in out:
        segment.text = tokenizer.decode(segment.tokens)
        if segment.words:  # timed words: the segment spans exactly its words
            segment.text = "".join(w["word"] for w in segment.words)
            segment.start, segment.end = segment.words[0]["start"], max(segment.words[-1]["end"],
                                                                        segment.words[0]["start"])
    return out
