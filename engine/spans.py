"""Which stretches of a file are decoded, as spans of mel frames.

Every plan here is a list of `Span(first, end)`: mel frames [first, end) of the file (100 frames
a second, `audio.FRAMES_PER_SECOND`), half-open, always frames, never samples. Voice-activity
regions come in as (start, end) sample ranges (`vad.speech_regions`) and leave as Spans.

- `seek_clips`: the reference's clip_timestamps (seconds) as the sequential seek loop's clips;
- `speech_spans`: the stretches worth decoding when long pauses are skipped, and
  `intersect_spans` of two plans (clips within speech);
- `stride_chunks` / `chunk_starts`: chunked mode's 30 s chunks overlapping by a stride, and
  `speech_chunks`: chunks cut at pauses (voice activity);
- `split_at_pause`: a voice chunk in two at its longest pause (a text-only chunk's re-decode);
- `floor_spans`: the whole-file windows whose maximum log-mel power sets the -8 floor.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES


class Span(NamedTuple):
    """Mel frames [first, end) of a file (frames, not samples)."""

    first: int  # first frame of the span
    end: int  # one past its last frame

    @property
    def frames(self) -> int:
        """How many frames the span holds."""
        return self.end - self.first


def _frames_of(start: int, end: int, audio_frames: int) -> tuple[int, int]:
    """A (start, end) range of samples -> the frames that hold it: the first frame that starts
    in it, the end rounded up, within the file's `audio_frames`."""
    return start // HOP_LENGTH, min(-(-end // HOP_LENGTH), audio_frames)


def seek_clips(clip_timestamps: Optional[Sequence[float]], audio_frames: int) -> list[Span]:
    """The spans to decode, as the reference turns `clip_timestamps` into `seek_clips`: seconds
    to frames, pairs, an odd last start running to the end."""
    points = [round(t * FRAMES_PER_SECOND) for t in (clip_timestamps or ())] or [0]
    if len(points) % 2:
        points.append(audio_frames)
    return [Span(first, end) for first, end in zip(points[::2], points[1::2])]


def speech_spans(regions: Sequence[tuple[int, int]], audio_frames: int, min_gap_s: float) -> list[Span]:
    """The stretches of a file worth decoding: voice-activity regions [(start, end)] in samples ->
    spans, merged across gaps shorter than `min_gap_s`. A lead or a tail that short stays with
    its span, so a file with speech throughout is one span, the whole file."""
    gap = round(min_gap_s * FRAMES_PER_SECOND)
    spans: list[list[int]] = []
    for start, end in regions:
        first, last = _frames_of(start, end, audio_frames)
        if spans and first - spans[-1][1] < gap:
            spans[-1][1] = max(spans[-1][1], last)
        elif last > first:
            spans.append([first, last])
    if spans and spans[0][0] < gap:
        spans[0][0] = 0
    if spans and audio_frames - spans[-1][1] < gap:
        spans[-1][1] = audio_frames
    return [Span(first, last) for first, last in spans]


def intersect_spans(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """The overlaps of two sorted lists of disjoint spans, sorted."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        first, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if first < end:
            out.append(Span(first, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def chunk_starts(audio_frames: int, stride_s: float) -> list[int]:
    """First frame of each chunk: every 30 - 2 * stride seconds until a chunk reaches the end."""
    step = N_FRAMES - 2 * round(stride_s * FRAMES_PER_SECOND)
    starts = [0]
    while starts[-1] + N_FRAMES < audio_frames:
        starts.append(starts[-1] + step)
    return starts


def stride_chunks(audio_frames: int, stride_s: float, spans: Optional[Sequence[Span]] = None) -> list[Span]:
    """The 30 s chunks that overlap by `stride_s` on each side, over the whole file or laid out
    anew inside each of `spans`."""
    return [Span(first + start, first + start + min(N_FRAMES, last - first - start))
            for first, last in (spans if spans is not None else [Span(0, audio_frames)])
            for start in chunk_starts(last - first, stride_s)]


def speech_chunks(regions: Sequence[tuple[int, int]], audio_frames: int) -> list[Span]:
    """Voice-activity regions (samples) grouped into disjoint chunks of at most 30 s that start
    and end at pauses. A region longer than 30 s is cut into 30 s pieces."""
    chunks: list[list[int]] = []
    for start, end in regions:
        first, last = _frames_of(start, end, audio_frames)
        if chunks:  # regions a few samples apart round into one frame: chunks stay disjoint
            first = max(first, chunks[-1][1])
        while last - first > N_FRAMES:  # only when the detector allows regions over 30 s
            chunks.append([first, first + N_FRAMES])
            first += N_FRAMES
        if chunks and last - chunks[-1][0] <= N_FRAMES:
            chunks[-1][1] = last
        elif last > first:
            chunks.append([first, last])
    return [Span(first, last) for first, last in chunks]


def split_at_pause(chunk: Span, speech: Sequence[Span]) -> tuple[Span, Span]:
    """`chunk` in two, cut in the middle of the longest pause between the `speech` spans (sorted,
    disjoint) inside it; where it holds no pause, in its middle."""
    inside = intersect_spans([chunk], speech)
    pauses = [(b.first - a.end, (a.end + b.first) // 2) for a, b in zip(inside, inside[1:]) if b.first > a.end]
    cut = max(pauses)[1] if pauses else (chunk.first + chunk.end) // 2
    return Span(chunk.first, cut), Span(cut, chunk.end)


def floor_spans(audio_frames: int) -> list[Span]:
    """The whole-file windows the -8 log-mel floor is the maximum over: every 3000 frames across
    `audio_frames` + 3000 (the mel of the file and its 30 s of zeros), the last one shorter."""
    total = audio_frames + N_FRAMES
    return [Span(first, min(first + N_FRAMES, total)) for first in range(0, total, N_FRAMES)]
