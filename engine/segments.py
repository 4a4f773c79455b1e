"""Sampled tokens of one 30 s window -> timed text segments, as the reference's transcribe does.

A segment is the text between two consecutive timestamp tokens; a window ending in a single
timestamp (no closing pair) still ends its last segment there.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .audio import FRAMES_PER_SECOND, TIME_PRECISION
from .decode.tokenizer import Tokenizer


@dataclasses.dataclass
class Segment:
    start: float  # seconds from the start of the file
    end: float
    text: str
    tokens: list[int]
    # of the window it came from: avg_logprob, compression_ratio, no_speech_prob, temperature (numbers)
    # and unlikely (True: its text failed the fallback thresholds at every temperature tried)
    stats: dict = dataclasses.field(default_factory=dict)
    words: list[dict] = dataclasses.field(default_factory=list)  # {word, start, end, probability}
    language: Optional[str] = None  # detected for its window (language per window), else None
    # its window's start in the audio decoded, in 10 ms mel frames (the reference's `seek`; with
    # voice activity, in the speech put back to back)
    seek: int = 0

    def to_json(self) -> dict:
        """The segment as records hold it: times and numbers rounded, flags as booleans; `seek` and
        `tokens` as the reference's segments have them (written records leave the tokens out:
        records.as_dict)."""
        out = {"seek": self.seek, "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
               "tokens": list(self.tokens),
               **{k: v if isinstance(v, bool) else round(v, 4) for k, v in self.stats.items()}}
        if self.language is not None:
            out["language"] = self.language
        if self.words:
            out["words"] = [{**w, "probability": round(w["probability"], 4)} for w in self.words]
        return out


def pair_ends(tokens: list[int], timestamp_begin: int) -> list[int]:
    """Index just after each pair of consecutive timestamps in a window's tokens (where its
    segments end)."""
    return [i + 1 for i in range(len(tokens) - 1) if tokens[i] >= timestamp_begin and tokens[i + 1] >= timestamp_begin]


def single_ending(tokens: list[int], timestamp_begin: int) -> bool:
    """Whether a window ends in one timestamp after text (no closing pair)."""
    return [t >= timestamp_begin for t in tokens[-2:]] == [False, True]


def cut_at(tokens: list[int], timestamp_begin: int) -> Optional[int]:
    """Index just after a window's last complete timestamp pair, where the reference cuts it and
    seeks to (None: the window is used to its end: no pair, or a single timestamp ending)."""
    ends = pair_ends(tokens, timestamp_begin)
    return ends[-1] if ends and not single_ending(tokens, timestamp_begin) else None


def aligned_tokens(tokens: list[int], timestamp_begin: int) -> list[int]:
    """The part of a window's tokens that becomes segments (the reference drops text after the
    last timestamp pair unless the window ends in a single timestamp)."""
    cut = cut_at(tokens, timestamp_begin)
    return tokens if cut is None else tokens[:cut]


def split_segments(tokens: list[int], tokenizer: Tokenizer, time_offset: float,
                   window_duration: float) -> list[Segment]:
    """Segments of one window's sampled tokens (no prompt, no EOT), times offset by the window."""
    ts_begin = tokenizer.timestamp_begin
    seek = round(time_offset * FRAMES_PER_SECOND)
    ends = pair_ends(tokens, ts_begin)
    segments = []
    if ends:
        slices = ends + ([len(tokens)] if single_ending(tokens, ts_begin) else [])
        start = 0
        for end in slices:
            piece = tokens[start:end]
            segments.append(Segment(
                start=time_offset + (piece[0] - ts_begin) * TIME_PRECISION,
                end=time_offset + (piece[-1] - ts_begin) * TIME_PRECISION,
                text=tokenizer.decode(piece), tokens=piece, seek=seek))
            start = end
        return [s for s in segments if s.text.strip() or s.end > s.start]
    stamps = [t for t in tokens if t >= ts_begin]
    end = window_duration
    if stamps and stamps[-1] != ts_begin:
        end = (stamps[-1] - ts_begin) * TIME_PRECISION
    text = tokenizer.decode(tokens)
    return [Segment(time_offset, time_offset + end, text, tokens, seek=seek)] if text.strip() else []
