"""Run progress and the end-of-run summary.

On a terminal: a tqdm bar redrawn in place on stderr (files, audio hours, real-time factor,
errors, elapsed and ETA). When stderr is not a terminal (batch jobs, logs on TPU VMs, CI,
`nohup`): a plain line every `log_every_s` seconds, whose ETA assumes the files still to do
are as long on average as the ones done.

Inside long files too: the device's batches (`transcribe.WatchedWork`) report each window
decoded, so the line counts windows and shows how far the long files under way have got
(`lecture.ogg 120/210 s, 4 windows`) while no file finishes for minutes; and the first batch of
each size says the decoder is compiling for it (a pause of up to a minute, cached afterwards).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from .files import atomic_write_text

SUMMARY = "summary.json"  # the run's totals, beside results.jsonl


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


LONG_FILE_S = 30.0  # a file longer than one window: its position is shown while it is under way
SHOWN_UNDER_WAY = 3  # long files named on a progress line (the rest are counted)


@dataclasses.dataclass
class FilePosition:
    """How far the decoding of one file under way has got."""

    name: str
    total_s: float  # seconds of audio the file decodes
    finished: Callable[[], bool]  # whether its job is done (or gone)
    done_s: float = 0.0  # seconds of it decoded
    windows: int = 0  # windows of it decoded

    def text(self) -> str:
        plural = "" if self.windows == 1 else "s"
        return (f"{os.path.basename(self.name.rstrip('/')) or self.name} {self.done_s:.0f}/{self.total_s:.0f} s, "
                f"{self.windows} window{plural}")


class Progress:
    """Counts finished files (`update` after each) and decoded windows (`window_done`, from the
    device's batches); `summary` at the end."""

    def __init__(self, total_files: int, *, stream: TextIO = sys.stderr, enabled: bool = True,
                 log_every_s: float = 30.0):
        self.total, self.stream, self.enabled, self.log_every_s = total_files, stream, enabled, log_every_s
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.files = self.errors = 0
        self.audio_s = 0.0
        self.windows = 0  # windows decoded, in every file
        self.under_way: dict[int, FilePosition] = {}  # files with windows decoded, by key
        self.start = time.monotonic()
        self.listing = False  # more files may be expected (`expect`) until `listed`
        self._last_log = self.start
        self._lock = threading.RLock()  # windows are reported from the device's thread
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_files, file=stream, unit="file", dynamic_ncols=True, smoothing=0.1,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} files [{elapsed}<{remaining}{postfix}]")

    def update(self, duration_s: Optional[float], error: bool) -> None:
        """A file's record is written (`duration_s`: its audio, None when unknown)."""
        with self._lock:
            self.files += 1
            self.errors += int(error)
            self.audio_s += duration_s or 0.0
            if not self.enabled:
                return
            now = time.monotonic()
            if self.bar is not None:
                self.bar.set_postfix_str(self._postfix(now), refresh=False)
                self.bar.update(1)
            elif now - self._last_log >= self.log_every_s or (self.files == self.total and not self.listing):
                self._log(now)

    def expect(self, files: int) -> None:
        """`files` more records to come: a run whose inputs are still being listed counts them
        as they are planned (until `listed`, the plain line shows the total as `N+`)."""
        with self._lock:
            self.total += files
            self.listing = True
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def listed(self) -> None:
        """Every input is listed: the total is final."""
        with self._lock:
            self.listing = False

    def window_done(self, key: int, name: str, reached_s: float, total_s: float,
                    finished: Callable[[], bool]) -> None:
        """A window of file `name` (`key`: its identity in this run) is decoded, up to
        `reached_s` of its `total_s` seconds; `finished` says whether the file is done."""
        with self._lock:
            self.windows += 1
            if not self.enabled:
                return
            if total_s > LONG_FILE_S:  # a short file's one window says nothing its record does not
                position = self.under_way.setdefault(key, FilePosition(name, total_s, finished))
                position.windows += 1
                position.done_s = max(position.done_s, min(reached_s, total_s))
            now = time.monotonic()
            if self.bar is not None:
                self.bar.set_postfix_str(self._postfix(now), refresh=True)
            elif now - self._last_log >= self.log_every_s:
                self._log(now)

    def compiling(self, batch: int) -> None:
        """The device's first batch of `batch` rows is about to be decoded: the decoder compiles."""
        self.note(f"whisper-nnx: compiling the decoder for batch {batch} (first run; cached afterwards)")

    def compiled(self, batch: int, seconds: float) -> None:
        """The first batch of `batch` rows took `seconds`, compiling included."""
        self.note(f"whisper-nnx: the decoder for batch {batch} is ready ({seconds:.1f} s, compiling included)")

    def note(self, text: str) -> None:
        """One line said once (above the bar on a terminal); nothing when progress is off."""
        if not self.enabled:
            return
        with self._lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def _log(self, now: float) -> None:
        self._last_log = now
        print(self.line(now), file=self.stream, flush=True)  # a progress report, not a log line

    def _speed(self, now: float) -> float:
        return self.audio_s / (now - self.start) if now > self.start else 0.0

    def _postfix(self, now: float) -> str:
        """The bar's text after its counts: audio, speed, errors, windows and the first long file under way."""
        text = (f"{self.audio_s / 3600:.2f} h audio, {self._speed(now):.1f}x real time, {self.errors} errors, "
                f"{self.windows} windows")
        long_files = self.long_files_under_way()
        return text + (f", {long_files[0].text()}" if long_files else "")

    def long_files_under_way(self) -> list[FilePosition]:
        """Files over one window with windows decoded and not finished (finished ones are forgotten)."""
        with self._lock:
            for key in [k for k, p in self.under_way.items() if p.finished()]:
                del self.under_way[key]
            return list(self.under_way.values())

    def line(self, now: Optional[float] = None) -> str:
        """The plain progress line: files, audio, windows, speed, errors, times, long files under way."""
        elapsed = (now or time.monotonic()) - self.start
        speed = self.audio_s / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * self.files / self.total) if self.total else width
        eta = "?"
        if self.files and self.files < self.total and speed > 0:
            eta = _clock((self.total - self.files) * (self.audio_s / self.files) / speed)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.files}/{self.total}{'+' * self.listing} files, "
                f"{self.audio_s / 3600:.2f} h audio, {self.windows} windows, {speed:.1f}x real time, "
                f"{self.errors} errors, elapsed {_clock(elapsed)}, eta {eta}")
        long_files = self.long_files_under_way()
        if long_files:
            shown = ", ".join(p.text() for p in long_files[:SHOWN_UNDER_WAY])
            more = len(long_files) - SHOWN_UNDER_WAY
            line += f"; under way: {shown}" + (f" and {more} more" if more > 0 else "")
        return line

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
