"""Run progress and the end-of-run summary.

On a terminal: a tqdm bar redrawn in place on stderr (files, audio hours, real-time factor,
errors, elapsed and ETA). When stderr is not a terminal (batch jobs, logs on TPU VMs, CI,
`nohup`): a plain line every `log_every_s` seconds, whose ETA assumes the files still to do
are as long on average as the ones done.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

from .files import atomic_write_text

SUMMARY = "summary.json"  # the run's totals, beside results.jsonl


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts finished files; `update` after each, `summary` at the end."""

    def __init__(self, total_files: int, *, stream: TextIO = sys.stderr, enabled: bool = True,
                 log_every_s: float = 30.0):
        self.total, self.stream, self.enabled, self.log_every_s = total_files, stream, enabled, log_every_s
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.files = self.errors = 0
        self.audio_s = 0.0
        self.start = time.monotonic()
        self._last_log = self.start
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_files, file=stream, unit="file", dynamic_ncols=True, smoothing=0.1,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} files [{elapsed}<{remaining}{postfix}]")

    def update(self, duration_s: Optional[float], error: bool) -> None:
        self.files += 1
        self.errors += int(error)
        self.audio_s += duration_s or 0.0
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None:
            speed = self.audio_s / (now - self.start) if now > self.start else 0.0
            self.bar.set_postfix_str(f"{self.audio_s / 3600:.2f} h audio, {speed:.1f}x real time, "
                                     f"{self.errors} errors", refresh=False)
            self.bar.update(1)
        elif now - self._last_log >= self.log_every_s or self.files == self.total:
            self._last_log = now
            print(self.line(now), file=self.stream, flush=True)  # a progress report, not a log line

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        speed = self.audio_s / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * self.files / self.total) if self.total else width
        eta = "?"
        if self.files and self.files < self.total and speed > 0:
            eta = _clock((self.total - self.files) * (self.audio_s / self.files) / speed)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.files}/{self.total} files, "
                f"{self.audio_s / 3600:.2f} h audio, {speed:.1f}x real time, {self.errors} errors, "
                f"elapsed {_clock(elapsed)}, eta {eta}")

    def summary(self, skipped: int = 0) -> dict:
        """Totals of this run: files and errors reported, audio hours, wall time, speed."""
        wall = time.monotonic() - self.start
        if self.bar is not None:
            self.bar.close()
        return {"files": self.files, "errors": self.errors, "audio_hours": round(self.audio_s / 3600, 6),
                "wall_s": round(wall, 3),
                # RTFx: seconds of audio per second of wall time (the reference's "x real time"; the
                # inverse of a real-time factor), eval's `rtfx`
                "rtfx": round(self.audio_s / wall, 3) if wall > 0 else None,
                "skipped_already_done": skipped}


def write_summary(out: Path, summary: dict, name: str = SUMMARY) -> None:
    atomic_write_text(out / name, json.dumps(summary, indent=2) + "\n")


def merge_summaries(out: Path) -> dict:
    """Sum per-process summaries (multi-host) into summary.json; wall time is the longest."""
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("summary.process-*.json"))]
    total = {"files": sum(p["files"] for p in parts), "errors": sum(p["errors"] for p in parts),
             "audio_hours": round(sum(p["audio_hours"] for p in parts), 6),
             "wall_s": max((p["wall_s"] for p in parts), default=0.0),
             "skipped_already_done": max((p["skipped_already_done"] for p in parts), default=0)}
    total["rtfx"] = round(total["audio_hours"] * 3600 / total["wall_s"], 3) if total["wall_s"] else None
    write_summary(out, total)
    for p in out.glob("summary.process-*.json"):
        p.unlink()
    return total
