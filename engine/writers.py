"""Per-file output formats (txt, json, srt, vtt, tsv), each written atomically.

txt, srt, vtt and tsv are byte-identical to the reference CLI's writers (whisper.utils) on the
same result, including its word-level subtitle options (`highlight_words`, `max_line_width`,
`max_line_count`, `max_words_per_line`), which act only when the segments carry "words".
json holds the same fields and values as the reference's, laid out for reading (indented, UTF-8):
the record's, with each segment numbered (`id`) and led by the reference's fields in its order
(`id`, `seek`, `start`, `end`, `text`, `tokens`); a segment's `tokens` (its window's token ids,
timestamps included) are there when the result is a Transcript (records read back from
results.jsonl, or made on Ray actors, have none: results.jsonl never holds tokens).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from .files import atomic_write_text, output_path
from .records import as_dict

FORMATS = ("json", "txt", "srt", "vtt", "tsv")
SEGMENT_HEAD = ("seek", "start", "end", "text", "tokens")  # after `id`, a json segment's first keys


def format_timestamp(seconds: float, decimal: str = ".", always_hours: bool = False) -> str:
    """Seconds -> [HH:]MM:SS.mmm (srt uses ',' as `decimal` and always shows hours).

    Negative times are refused, as the reference does (it asserts), even those that would
    round to 0 ms.
    """
    if not seconds >= 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds!r}")
    millis = round(seconds * 1000.0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _txt(result: dict, **_) -> str:
    return "".join(seg["text"].strip() + "\n" for seg in result["segments"])


def _json(result: dict, **_) -> str:
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


def reference_segments(segments: Sequence[Mapping]) -> list[dict]:
    """Segments as the reference's json has them: `id` (the index), then `seek`, `start`, `end`,
    `text`, `tokens` (those a segment has), then its other fields in their order."""
    out = []
    for index, segment in enumerate(segments):
        head = {"id": index, **{key: segment[key] for key in SEGMENT_HEAD if key in segment}}
        out.append({**head, **{key: value for key, value in segment.items() if key not in head}})
    return out


def _tsv(result: dict, **_) -> str:
    # Integer milliseconds; only tabs are replaced in the text (a newline in it splits the row,
    # as in the reference).
    rows = ["start\tend\ttext"]
    rows += [f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t"
             f"{s['text'].strip().replace(chr(9), ' ')}" for s in result["segments"]]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# Subtitles (srt, vtt)

def _has_words(segments: list[dict]) -> bool:
    # The reference looks at the first segment only, but its results always carry "words" on
    # every segment once word timestamps are on (an empty list where none were found), whereas
    # ours leave the key out where the list would be empty: any segment with the key counts.
    return any("words" in seg for seg in segments)


def _group_words(segments: list[dict], max_line_width: int | None, max_line_count: int | None,
                 max_words_per_line: int | None) -> list[list[dict]]:
    """Word timings grouped into cues, "\\n" (line breaks) and stripping applied to the words.

    The reference's rules: while either the width or the count is unset, every segment (and each
    run of `max_words_per_line` words within one) starts a new cue, and a line is broken when
    the next word would pass the width (default 1000 characters). With both set, segments are
    ignored: a cue ends after `max_line_count` lines, or before a word starting more than 3 s
    after the previous word's start (the reference measures pauses from the start, not the end,
    of the word before), and `max_words_per_line` has no effect. Segments without words
    contribute nothing (their text is not in the subtitles: the reference's behaviour).
    """
    keep_segments = max_line_width is None or max_line_count is None
    width = max_line_width or 1000
    run_length = max_words_per_line or 1000
    first_start = next((w["start"] for s in segments for w in s.get("words", ())),
                       segments[0]["start"] if segments else None)
    previous_start = first_start or 0.0
    cues: list[list[dict]] = []
    cue: list[dict] = []
    line_len, line_count = 0, 1
    for seg in segments:
        words = seg.get("words") or []
        for run_start in range(0, len(words), run_length):
            for i, original in enumerate(words[run_start:run_start + run_length]):
                word = dict(original)
                text = word["word"]
                pause = not keep_segments and word["start"] - previous_start > 3.0
                new_run = keep_segments and i == 0 and bool(cue)
                if line_len > 0 and line_len + len(text) <= width and not pause and not new_run:
                    line_len += len(text)  # same line
                else:
                    text = text.strip()
                    if new_run or (cue and max_line_count is not None
                                   and (pause or line_count >= max_line_count)):
                        cues.append(cue)  # new cue
                        cue, line_count = [], 1
                    elif line_len > 0:
                        line_count += 1  # new line in this cue
                        text = "\n" + text
                    line_len = len(text.strip())
                    word["word"] = text
                cue.append(word)
                previous_start = word["start"]
    if cue:
        cues.append(cue)
    return cues


# Leading whitespace kept outside the underline. Without DOTALL, a word holding a newline other
# than a final one is left unmarked, and a final newline stays after </u> (the reference's regex).
_UNDERLINE = re.compile(r"^(\s*)(.*)$")


def _cues(result: dict, timestamp: Callable[[float], str], highlight_words: bool = False,
          max_line_width: int | None = None, max_line_count: int | None = None,
          max_words_per_line: int | None = None) -> Iterator[tuple[str, str, str]]:
    """(start, end, text) of each subtitle cue, times already formatted."""
    segments = result["segments"]
    if not _has_words(segments):
        for seg in segments:
            yield timestamp(seg["start"]), timestamp(seg["end"]), seg["text"].strip().replace("-->", "->")
        return
    # Reference quirk kept: in word mode, "-->" inside the text is not defused.
    for cue in _group_words(segments, max_line_width, max_line_count, max_words_per_line):
        start, end = timestamp(cue[0]["start"]), timestamp(cue[-1]["end"])
        texts = [w["word"] for w in cue]
        whole = "".join(texts)
        if not highlight_words:
            yield start, end, whole
            continue
        cursor = start  # one cue per word; a gap before a word shows the cue unmarked
        for i, word in enumerate(cue):
            word_start, word_end = timestamp(word["start"]), timestamp(word["end"])
            if word_start != cursor:
                yield cursor, word_start, whole
            marked = texts[:i] + [_UNDERLINE.sub(r"\1<u>\2</u>", texts[i], count=1)] + texts[i + 1:]
            yield word_start, word_end, "".join(marked)
            cursor = word_end


def _srt(result: dict, **options) -> str:
    stamp = lambda t: format_timestamp(t, ",", True)
    return "".join(f"{i}\n{start} --> {end}\n{text}\n\n"
                   for i, (start, end, text) in enumerate(_cues(result, stamp, **options), start=1))


def _vtt(result: dict, **options) -> str:
    return "WEBVTT\n\n" + "".join(f"{start} --> {end}\n{text}\n\n"
                                  for start, end, text in _cues(result, format_timestamp, **options))


_RENDERERS: dict[str, Callable[..., str]] = {
    "json": _json, "txt": _txt, "srt": _srt, "vtt": _vtt, "tsv": _tsv,
}


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """`formats` if every one is known, else ValueError naming the unknown ones."""
    unknown = [f for f in formats if f not in _RENDERERS]
    if unknown:
        raise ValueError(f"unknown output format {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}")
    return formats


def write_outputs(result: Mapping, output_dir: Path, stem: str, formats: tuple[str, ...], *,
                  highlight_words: bool = False, max_line_width: int | None = None,
                  max_line_count: int | None = None, max_words_per_line: int | None = None) -> list[Path]:
    """Write `result` (a Transcript or a results.jsonl record) as each format, named `stem.<format>`.

    The keyword options shape srt and vtt when the segments carry "words" (as the reference's
    --highlight_words, --max_line_width, --max_line_count, --max_words_per_line); 0 or None
    means unset, and without words they have no effect.
    """
    check_formats(formats)
    segments = reference_segments(result.get("segments") or [])  # as given: a Transcript's with tokens
    result = {**as_dict(result), "segments": segments}  # else what results.jsonl holds: no tokens
    options = {"highlight_words": bool(highlight_words), "max_line_width": max_line_width or None,
               "max_line_count": max_line_count or None, "max_words_per_line": max_words_per_line or None}
    written = []
    for fmt in formats:
        path = output_path(output_dir, stem, fmt)
        atomic_write_text(path, _RENDERERS[fmt](result, **options))
        written.append(path)
    return written
