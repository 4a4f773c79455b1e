"""Per-file output formats (txt, json, srt, vtt, tsv), each written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

FORMATS = ("json", "txt", "srt", "vtt", "tsv")


def format_timestamp(seconds: float, decimal: str = ".", always_hours: bool = False) -> str:
    """Seconds -> [HH:]MM:SS.mmm (srt uses ',' as `decimal` and always shows hours)."""
    millis = round(seconds * 1000.0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _txt(result: dict) -> str:
    return "".join(seg["text"].strip() + "\n" for seg in result["segments"])


def _json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


def _srt(result: dict) -> str:
    blocks = []
    for i, seg in enumerate(result["segments"], start=1):
        span = (f"{format_timestamp(seg['start'], ',', True)} --> "
                f"{format_timestamp(seg['end'], ',', True)}")
        blocks.append(f"{i}\n{span}\n{seg['text'].strip().replace('-->', '->')}\n")
    return "\n".join(blocks)


def _vtt(result: dict) -> str:
    lines = ["WEBVTT\n"]
    for seg in result["segments"]:
        lines.append(f"{format_timestamp(seg['start'])} --> {format_timestamp(seg['end'])}\n"
                     f"{seg['text'].strip().replace('-->', '->')}\n")
    return "\n".join(lines)


def _tsv(result: dict) -> str:
    rows = ["start\tend\ttext"]
    rows += [f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t"
             f"{s['text'].strip().replace(chr(9), ' ')}" for s in result["segments"]]
    return "\n".join(rows) + "\n"


_RENDERERS: dict[str, Callable[[dict], str]] = {
    "json": _json, "txt": _txt, "srt": _srt, "vtt": _vtt, "tsv": _tsv,
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(result: dict, output_dir: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Write `result` (the results.jsonl record) as each format, named `stem.<format>`."""
    written = []
    for fmt in formats:
        if fmt not in _RENDERERS:
            raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
        path = output_dir / f"{stem}.{fmt}"
        atomic_write_text(path, _RENDERERS[fmt](result))
        written.append(path)
    return written
