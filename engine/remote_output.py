"""`--output-dir` in object storage (any fsspec URL): a local staging folder mirrored to the URL
in append-only parts, so that a killed run resumes from what reached the bucket.

    start   pull: the bucket's records (results.jsonl plus any parts/*.jsonl) become the staging
            folder's results.jsonl; the bucket is the truth, whatever the staging folder held
    run     the run writes to the staging folder as to any local --output-dir; every
            `upload_every_s` seconds (and at the end, and when the run fails) the records written
            since the last upload go up as one new object `parts/<run>-<n>.jsonl`, after the
            per-format files of those records (a record in the bucket never names a missing file)
    end     results.jsonl (every record) and the run's own files (those named by `run_file`:
            summary.json, results.parquet, eval.json, eval.md) are put, then the parts are deleted

Each object is written by one PUT, which object stores make atomic: a kill loses at most the
records of the last `upload_every_s` seconds, which the resumed run redoes; none is duplicated
(a kill between the final results.jsonl and the deletion of the parts leaves the same lines in
both, and `pull` keeps each line once). Only a single-process run writes to a URL (several
processes would each stage their own part of the run).

`BucketSink` is the run's second sink, driven by `run.BulkRun`: entered (pull) under the run's lock,
handed each record once `ResultSink` has it on the staging disk (`write`), and left with the run
(`finish` when it ended, `flush` when it failed). It keeps the results-file rules of results.py:
its lines are `results.record_line`, a line counts as a record by `results.parse_record`, and the
staging results.jsonl is replaced atomically.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Mapping, Optional

from absl import logging

from . import storage
from .files import atomic_write_text, output_path, output_stem
from .results import RESULTS, parse_record, process_files, record_line

PARTS = "parts"


def default_staging(url: str) -> Path:
    """~/.cache/whisper-nnx/staging/<hash of the URL>: one staging folder per output URL."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-nnx" / "staging"
    return root / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]


class BucketSink:
    """The mirror of a staging folder to `url` (see the module docstring)."""

    def __init__(self, url: str, staging: Optional[str | os.PathLike] = None, formats: tuple[str, ...] = (),
                 upload_every_s: float = 30.0):
        """`staging`: the local folder the run writes (None: `default_staging(url)`); `formats`:
        the per-format files each transcript has there."""
        self.url = url.rstrip("/")
        self.staging = Path(staging) if staging else default_staging(self.url)
        self.formats, self.upload_every_s = tuple(formats), upload_every_s
        self.fs, self.root = storage.filesystem(self.url)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._pending: list[Mapping] = []
        self._run_files: list[str] = []
        self._parts = 0
        self._last = time.monotonic()

    def _path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    # --- start ---------------------------------------------------------------------------------

    def __enter__(self) -> "BucketSink":
        found = self.pull()  # the bucket's records are the truth
        logging.info("%s holds %d records", self.url, found)
        return self

    def remote_lines(self) -> list[str]:
        """Every record line in the bucket (results.jsonl, then the parts in name order), each once."""
        names = [self._path(RESULTS)] if self.fs.exists(self._path(RESULTS)) else []
        if self.fs.exists(self._path(PARTS)):
            names += sorted(self.fs.find(self._path(PARTS)))
        lines, seen = [], set()
        for name in names:
            for line in self.fs.cat_file(name).decode("utf-8").splitlines():
                # an object cut short cannot exist (one PUT each); a foreign line is skipped
                if line not in seen and parse_record(line) is not None:
                    seen.add(line)
                    lines.append(line)
        return lines

    def pull(self) -> int:
        """Replace the staging folder's results.jsonl by the bucket's records; returns their count."""
        self.staging.mkdir(parents=True, exist_ok=True)
        for stale in process_files(self.staging):
            stale.unlink()
        lines = self.remote_lines()
        atomic_write_text(self.staging / RESULTS, "".join(line + "\n" for line in lines))
        return len(lines)

    # --- during the run ------------------------------------------------------------------------

    def write(self, record: Mapping) -> None:
        """A record is on the staging disk (with its files): upload it in the next part."""
        self._pending.append(record)
        if time.monotonic() - self._last >= self.upload_every_s:
            self.flush()

    def run_file(self, name: str) -> None:
        """A file of the whole run in the staging folder (summary, table, scores): put at the end."""
        if name not in self._run_files:
            self._run_files.append(name)

    def flush(self) -> None:
        """Put the pending records' per-format files, then the records as one new part."""
        self._last = time.monotonic()
        if not self._pending:
            return
        for record in self._pending:
            if record.get("error") is None:
                stem = output_stem(record["path"])
                for fmt in self.formats:
                    local = output_path(self.staging, stem, fmt)
                    if local.exists():
                        self.fs.put_file(str(local), self._path(local.name))
        self._parts += 1
        body = "".join(record_line(r) for r in self._pending)
        self.fs.pipe_file(self._path(PARTS, f"{self.run_id}-{self._parts:06d}.jsonl"), body.encode("utf-8"))
        self._pending = []

    # --- end -----------------------------------------------------------------------------------

    def __exit__(self, exc_type, *_) -> None:
        """The run ended: `finish`; it failed: `flush` (what was written reaches the bucket; the
        rest is redone on resume)."""
        if exc_type is None:
            self.finish()
        else:
            self.flush()

    def finish(self) -> None:
        """results.jsonl and the run's files to the bucket, then the parts removed."""
        self.flush()
        for name in self._run_files:
            if (self.staging / name).exists():
                self.fs.put_file(str(self.staging / name), self._path(name))
        self.fs.put_file(str(self.staging / RESULTS), self._path(RESULTS))
        if self.fs.exists(self._path(PARTS)):
            for part in self.fs.find(self._path(PARTS)):
                self.fs.rm_file(part)
        logging.info("results in %s", self.url)
