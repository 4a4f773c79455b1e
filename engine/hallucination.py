"""The reference's `hallucination_silence_threshold` (sequential long-form with word timestamps):
a segment whose words look made up (improbable, or implausibly short or long) and that sits
between silences longer than the threshold is dropped, and the seek loop skips the silence
around it, as `whisper.transcribe` does.

    segments of one window (with words) -> skip_hallucinations -> (next seek, segments kept,
                                                                   or None: skip the window)

Also the record-level checks `FileJob.result` makes: `noise_reason` (always on: punctuation-only
text over a window that is likely non-speech is dropped) and `suspect_reason` (the opt-in
`--hallucination-filter`); the segments they drop are kept in the record's `dropped_segments`
with the reason.
"""

from __future__ import annotations

import unicodedata
from typing import Optional, Sequence

from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .segments import Segment

PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"  # words that are only these do not count


def word_anomaly_score(word: dict) -> float:
    """How unlike a spoken word it is: improbable, shorter than 0.133 s, or longer than 2 s."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: Optional[Segment]) -> bool:
    """Whether the first 8 words of `segment` (punctuation aside) look like a hallucination."""
    if segment is None or not segment.words:
        return False
    words = [w for w in segment.words if w["word"] not in PUNCTUATION][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def next_words_segment(segments: Sequence[Segment]) -> Optional[Segment]:
    return next((s for s in segments if s.words), None)


def words_end(segments: Sequence[Segment]) -> Optional[float]:
    """End of the last word of `segments`, None when they hold no words."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.words)), None)


def skip_hallucinations(segments: list[Segment], *, threshold: float, seek: int, window_frame: int,
                        segment_frames: int, single_ending: bool, last_speech: float,
                        content_frames: int) -> tuple[int, Optional[list[Segment]]]:
    """The window's next seek and the segments to keep (None: drop the whole window and seek
    past the silence before its first, anomalous segment).

    `seek` is where the loop would go on without this rule, `window_frame` the window's first
    frame, `segment_frames` the frames of file it decoded, `last_speech` the end of the last word
    heard before it, `content_frames` the file's frames (all in 10 ms mel frames)."""
    time_offset = window_frame * HOP_LENGTH / SAMPLE_RATE
    window_end_time = (window_frame + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
    segment_duration = segment_frames * HOP_LENGTH / SAMPLE_RATE
    content_duration = content_frames * HOP_LENGTH / SAMPLE_RATE
    if not single_ending:
        last_word_end = words_end(segments)
        if last_word_end is not None and last_word_end > time_offset:
            remaining = window_end_time - last_word_end
            seek = round(last_word_end * FRAMES_PER_SECOND) if remaining > threshold else window_frame + segment_frames

    first = next_words_segment(segments)
    if first is not None and is_segment_anomaly(first):  # skip the silence before a leading hallucination
        gap = first.start - time_offset
        if gap > threshold:
            return window_frame + round(gap * FRAMES_PER_SECOND), None

    # Drop a hallucination surrounded by silence (or more hallucinations), and what follows it.
    last_end = last_speech
    for i, segment in enumerate(segments):
        if not segment.words:
            continue
        if is_segment_anomaly(segment):
            after = next_words_segment(segments[i + 1:])
            next_start = after.words[0]["start"] if after is not None else time_offset + segment_duration
            silence_before = (segment.start - last_end > threshold or segment.start < threshold
                              or segment.start - time_offset < 2.0)
            silence_after = (next_start - segment.end > threshold or is_segment_anomaly(after)
                             or window_end_time - segment.end < 2.0)
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment.start) * FRAMES_PER_SECOND)
                if content_duration - segment.end < threshold:
                    seek = content_frames
                return seek, segments[:i]
        last_end = segment.end
    return seek, segments


# --- the opt-in output filter (`--hallucination-filter`) ---------------------------------------

def repeated_ngram(text: str, longest: int = 4, times: int = 3) -> bool:
    """The text's words are one n-gram (n <= `longest`) said `times` or more times over."""
    words = ["".join(c for c in w.lower() if c.isalnum()) for w in text.split()]
    words = [w for w in words if w]
    for n in range(1, longest + 1):
        if len(words) >= n * times and len(words) % n == 0 and words == words[:n] * (len(words) // n):
            return True
    return False


def suspect_reason(segment: Segment, logprob_threshold: Optional[float], no_speech_threshold: Optional[float],
                   compression_ratio_threshold: Optional[float]) -> Optional[str]:
    """Why a segment looks like a known hallucination pattern, None when it does not: its window
    stayed improbable or repetitive at every fallback temperature, the model itself gave the
    window more chance of holding no speech than the no-speech threshold, or its words are one
    short phrase repeated."""
    stats = segment.stats
    if logprob_threshold is not None and stats.get("avg_logprob", 0.0) < logprob_threshold:
        return "improbable at every fallback temperature"
    if compression_ratio_threshold is not None and stats.get("compression_ratio", 0.0) > compression_ratio_threshold:
        return "repetitive at every fallback temperature"
    if no_speech_threshold is not None and stats.get("no_speech_prob", 0.0) > no_speech_threshold:
        return "text over likely non-speech"
    if repeated_ngram(segment.text):
        return "repeated n-gram"
    return None


# --- always on: punctuation over likely non-speech ---------------------------------------------

PUNCTUATION_ONLY = "punctuation only over likely non-speech"  # a dropped segment's reason


def is_punctuation_only(text: str) -> bool:
    """Whether `text` has characters and all of them are punctuation or spaces (". . . .",
    "...", "!", " -"): no word was heard."""
    return bool(text.strip()) and all(c.isspace() or unicodedata.category(c).startswith("P") for c in text)


def noise_reason(segment: Segment, no_speech_threshold: Optional[float]) -> Optional[str]:
    """PUNCTUATION_ONLY when the segment's window is likely non-speech (its no_speech_prob above
    the threshold) and its text is punctuation only, which is what Whisper writes over noise
    (fans, hum, dithered silence) that it decodes confidently enough to escape the silence
    skip; None otherwise (real speech keeps its punctuation). None threshold: never."""
    if no_speech_threshold is None or segment.stats.get("no_speech_prob", 0.0) <= no_speech_threshold:
        return None
    return PUNCTUATION_ONLY if is_punctuation_only(segment.text) else None
