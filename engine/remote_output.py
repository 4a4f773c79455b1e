"""`--output-dir` in object storage (any fsspec URL): a local staging folder mirrored to the URL
in append-only parts, so that a killed run resumes from what reached the bucket.

    start   lease: `lease.json` in the bucket names this run (a uuid) until an expiry, renewed at
            each upload and by a thread every third of `lease_s`; a live lease of another run
            refuses this one (`OutputLeased`, a `results.RunLocked`: exit 2) before any work; an
            expired one (or one of a dead process on this host) is taken over; missing credentials,
            a refused permission or a missing bucket stop the run here (`OutputUnreachable`: exit
            2), before the model loads. Then pull: the
            bucket's records (results.jsonl plus any parts/*.jsonl) become the staging
            folder's results.jsonl; the bucket is the truth, whatever the staging folder held
    run     the run writes to the staging folder as to any local --output-dir; every
            `upload_every_s` seconds (and at the end, and when the run fails) the records written
            since the last upload go up as one new object `parts/<run>-<n>.jsonl`, after the
            files each of those records lists in `files` (a record in the bucket never names a
            missing file)
    end     the run's own files (those named by `run_file`: summary.json, results.parquet,
            eval.json, eval.md) are put; the bucket's records are read again and results.jsonl
            becomes their union with this run's (less the records this run dropped to redo
            them), then only the parts read for it are deleted (a part another run put
            meanwhile stays for the next pull); the lease is released

Each object is written by one PUT, which object stores make atomic: a kill loses at most the
records of the last `upload_every_s` seconds, which the resumed run redoes; none is duplicated
(a kill between the final results.jsonl and the deletion of the parts leaves the same lines in
both, and `pull` keeps each line once). Only a single-process run writes to a URL (several
processes would each stage their own part of the run). The lease is written, then read back
after `settle_s`: of two runs starting together, the one whose lease was overwritten stops.

`BucketSink` is the run's second sink, driven by `run.BulkRun`: entered (pull) under the run's lock,
handed each record once `ResultSink` has it on the staging disk (`write`), and left with the run
(`finish` when it ended, `flush` when it failed). It keeps the results-file rules of results.py:
its lines are `results.record_line`, a line counts as a record by `results.parse_record`, and the
staging results.jsonl is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Optional

from absl import logging

from . import storage
from .files import atomic_write_pieces
from .results import RESULTS, RunLocked, parse_record, process_files, record_line

PARTS = "parts"
LEASE = "lease.json"


class OutputLeased(RunLocked):
    """Another run holds the output URL (its lease in the bucket is live)."""


class OutputUnreachable(ValueError):
    """The output URL cannot be read or written with this process's credentials (none found,
    refused, no such bucket): found at the start, before the model loads (a ValueError: the CLI's
    exit 2, a setup error)."""


# Exceptions (by class name: each storage client has its own) that say the credentials are
# missing or refused, besides PermissionError (s3fs: AccessDenied, InvalidAccessKeyId, ...)
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "NoAuthTokenError", "UnauthorizedSSOTokenError", "DefaultCredentialsError", "RefreshError",
                      "ClientAuthenticationError"}


def _setup_error(err: BaseException) -> bool:
    """Whether `err`, raised by the start's lease and pull, is the output's setup failing (no
    credentials, no permission, no such bucket) rather than a passing failure (a network error)."""
    return isinstance(err, (PermissionError, FileNotFoundError)) or \
        any(cls.__name__ in _CREDENTIAL_ERRORS for cls in type(err).__mro__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def default_staging(url: str) -> Path:
    """~/.cache/whisper-nnx/staging/<hash of the URL>: one staging folder per output URL."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-nnx" / "staging"
    return root / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]


class BucketSink:
    """The mirror of a staging folder to `url` (see the module docstring)."""

    def __init__(self, url: str, staging: Optional[str | os.PathLike] = None, formats: tuple[str, ...] = (),
                 upload_every_s: float = 30.0, lease_s: float = 600.0, renew: bool = True,
                 settle_s: float = 1.0):
        """`staging`: the local folder the run writes (None: `default_staging(url)`); `formats`:
        kept for callers (each record lists its files); `lease_s`: how long the lease holds
        unrenewed; `renew`: renew it from a thread too (not only at uploads)."""
        self.url = url.rstrip("/")
        self.staging = Path(staging) if staging else default_staging(self.url)
        self.formats, self.upload_every_s = tuple(formats), upload_every_s
        self.lease_s, self.renew, self.settle_s = lease_s, renew, settle_s
        self.fs, self.root = storage.filesystem(self.url)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex}"  # unique in any container
        self._pending: list[Mapping] = []
        self._run_files: list[str] = []
        self._pulled: set[bytes] = set()  # hashes (`_line_digest`) of the record lines pulled
        self._parts = 0
        self._last = time.monotonic()
        self._lease_lock = threading.Lock()
        self._stop = threading.Event()
        self._lost: Optional[str] = None

    def _path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    # --- start ---------------------------------------------------------------------------------

    def __enter__(self) -> "BucketSink":
        """Take the lease and pull the bucket's records: the first reads, writes and deletes in
        the bucket, so missing credentials or permissions stop the run here (`OutputUnreachable`),
        before anything is transcribed."""
        try:
            self.acquire()
        except OutputLeased:
            raise
        except Exception as err:
            if _setup_error(err):
                raise self._unreachable(err) from err
            raise
        try:
            found = self.pull()  # the bucket's records are the truth
        except BaseException as err:
            self.release()
            if isinstance(err, Exception) and _setup_error(err):
                raise self._unreachable(err) from err
            raise
        logging.info("%s holds %d records", self.url, found)
        return self

    def _unreachable(self, err: Exception) -> OutputUnreachable:
        return OutputUnreachable(storage.redact(
            f"{self.url}: cannot use the output there ({type(err).__name__}: {err}); give this process "
            "credentials (environment, profile or instance role) allowed to read, write and delete "
            "objects under it, and check that the bucket exists"))

    def _lease(self) -> Optional[dict]:
        try:
            held = json.loads(self.fs.cat_file(self._path(LEASE)))
        except FileNotFoundError:
            return None
        except ValueError:  # not ours to read: counts as none
            return None
        return held if isinstance(held, dict) else None

    def _put_lease(self) -> None:
        self.fs.pipe_file(self._path(LEASE), json.dumps({
            "owner": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "expires": time.time() + self.lease_s}).encode("utf-8"))

    def _live(self, held: dict) -> bool:
        """Whether another run's lease still holds: unexpired, and not of a dead process here."""
        if float(held.get("expires", 0)) < time.time():
            return False
        pid = held.get("pid")
        same_host = held.get("host") == socket.gethostname()
        return not (same_host and isinstance(pid, int) and pid != os.getpid() and not _alive(pid))

    def acquire(self) -> None:
        """Take the URL's lease, or raise `OutputLeased` while another run holds it."""
        held = self._lease()
        if held is not None and held.get("owner") != self.run_id and self._live(held):
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(held.get("expires", 0))))
            raise OutputLeased(f"{self.url} is in use by another run (host {held.get('host')}, pid "
                               f"{held.get('pid')}, lease until {until} UTC); wait for it to finish, or "
                               "choose another --output-dir")
        if held is not None:
            logging.warning("%s: taking over the lease of run %s", self.url, held.get("owner"))
        self._put_lease()
        time.sleep(self.settle_s)  # a run that read no lease just before ours was put has put its own
        if (self._lease() or {}).get("owner") != self.run_id:
            raise OutputLeased(f"{self.url} is in use by another run that started at the same moment")
        if self.renew:
            threading.Thread(target=self._renew_loop, name="bucket-lease", daemon=True).start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew_lease()
            except Exception as err:  # noqa: BLE001 - the next upload tries again and says why
                logging.warning("%s: renewing the lease failed: %s", self.url, err)

    def renew_lease(self) -> None:
        """Push the lease's expiry on; `OutputLeased` when another run has taken it meanwhile."""
        with self._lease_lock:
            if self._lost is None:
                held = self._lease()
                if held is not None and held.get("owner") != self.run_id:
                    self._lost = f"{self.url}: another run ({held.get('host')}, pid {held.get('pid')}) " \
                                 "took the lease after it expired; this run stops"
                else:
                    self._put_lease()
            if self._lost is not None:
                raise OutputLeased(self._lost)

    def release(self) -> None:
        """Stop renewing; remove the lease while it is still this run's."""
        self._stop.set()
        with self._lease_lock:
            held = self._lease()
            if held is not None and held.get("owner") == self.run_id:
                self.fs.rm_file(self._path(LEASE))

    def _read_bucket(self) -> tuple["_ObjectLines", list[str]]:
        """(the record lines in the bucket: results.jsonl, then the parts in name order, read a
        line at a time on each pass, repeats included; the parts listed now, which are all it
        reads)."""
        self.fs.invalidate_cache()  # another run's parts must be seen
        names = [self._path(RESULTS)] if self.fs.exists(self._path(RESULTS)) else []
        parts = sorted(self.fs.find(self._path(PARTS))) if self.fs.exists(self._path(PARTS)) else []
        return _ObjectLines(self.fs, names + parts), parts

    def remote_lines(self) -> list[str]:
        """Every record line in the bucket (results.jsonl, then the parts in name order), each
        once, in a list (for a look at the bucket: the run itself streams them)."""
        return list(dict.fromkeys(self._read_bucket()[0]))

    def pull(self) -> int:
        """Replace the staging folder's results.jsonl by the bucket's records (each line once),
        streamed to disk; keeps a 16-byte hash of each; returns their count."""
        self.staging.mkdir(parents=True, exist_ok=True)
        for stale in process_files(self.staging):
            stale.unlink()
        lines, _ = self._read_bucket()
        self._pulled = set()
        _write_lines(self.staging / RESULTS, _unique(lines, self._pulled))
        return len(self._pulled)

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
        """Renew the lease; put the files the pending records list, then the records as one new part."""
        self._last = time.monotonic()
        if not self._pending:
            return
        self.renew_lease()
        for record in self._pending:
            for name in record.get("files") or ():
                local = self.staging / name
                if local.is_file():
                    self.fs.put_file(str(local), self._path(name))
        self._parts += 1
        body = "".join(record_line(r) for r in self._pending)
        self.fs.pipe_file(self._path(PARTS, f"{self.run_id}-{self._parts:06d}.jsonl"), body.encode("utf-8"))
        self._pending = []

    # --- end -----------------------------------------------------------------------------------

    def __exit__(self, exc_type, *_) -> None:
        """The run ended: `finish`; it failed: `flush` (what was written reaches the bucket; the
        rest is redone on resume). The lease goes either way."""
        try:
            if exc_type is None:
                self.finish()
            else:
                self.flush()
        finally:
            self.release()

    def finish(self) -> None:
        """The run's files to the bucket; results.jsonl the union of the bucket's records and this
        run's; then the parts merged into it removed (only those)."""
        self.flush()
        for name in self._run_files:
            if (self.staging / name).exists():
                self.fs.put_file(str(self.staging / name), self._path(name))
        remote, parts = self._read_bucket()
        local = self.staging / RESULTS
        dropped = self._pulled  # what is left of it: the records this run removed to redo their entries
        for line in _file_lines(local):
            dropped.discard(_line_digest(line))
        # a dropped line is never written, as a line already written is not written again
        _write_lines(local, _unique(_chain(remote, _file_lines(local)), dropped))
        _put_streamed(self.fs, local, self._path(RESULTS))
        for part in parts:
            self.fs.rm_file(part)
        logging.info("results in %s", self.url)


UPLOAD_BLOCK = 8 << 20  # bytes of a file held at a time while it is put (an S3 part is 5 MiB at least)


def _put_streamed(fs, local: Path, remote: str, block: Optional[int] = None) -> None:
    """`local` to `remote` a block at a time (a multipart upload on S3, resumable on GCS: the
    object appears whole when it completes). fsspec's put_file reads a file of up to 100 MiB
    whole into memory (s3fs: one PUT below twice its 50 MiB chunk)."""
    block = block or UPLOAD_BLOCK
    with open(local, "rb") as source, fs.open(remote, "wb", block_size=block) as target:
        while chunk := source.read(block):
            target.write(chunk)


def _line_digest(line: str) -> bytes:
    """A 16-byte hash of a record line: what the mirror keeps of a line to know it again."""
    return hashlib.blake2b(line.encode("utf-8", "surrogatepass"), digest_size=16).digest()


READ_BLOCK = 4 << 20  # bytes of a results file or object read at a time


def _record_lines(handle: IO[bytes], block: Optional[int] = None) -> Iterator[str]:
    """The record lines of a results file or object open for reading (split at b"\\n" only,
    read `block` bytes at a time: what is held is a block and the line it ends in); anything
    else (a foreign line) is skipped. Blocks, not `readline`: fsspec's buffered files answer
    each readline with a block-sized read and a seek back, and hold the object's bytes."""
    rest, block = b"", block or READ_BLOCK
    while chunk := handle.read(block):
        pieces = (rest + chunk).split(b"\n")
        rest = pieces.pop()
        for raw in pieces:
            line = raw.decode("utf-8")
            if parse_record(line) is not None:
                yield line
    if rest and parse_record(rest.decode("utf-8")) is not None:
        yield rest.decode("utf-8")


class _ObjectLines:
    """The record lines of objects `names` in `fs`, in order, read a line at a time on each pass."""

    def __init__(self, fs, names: list[str]):
        self.fs, self.names = fs, names

    def __iter__(self) -> Iterator[str]:
        for name in self.names:  # an object cut short cannot exist (one PUT each)
            # no read cache: each read of READ_BLOCK is one ranged GET, nothing kept after it
            with self.fs.open(name, "rb", block_size=READ_BLOCK, cache_type="none") as handle:
                yield from _record_lines(handle)


def _file_lines(path: Path) -> Iterator[str]:
    """The record lines of a local results file (none if it is not there)."""
    if path.exists():
        with open(path, "rb") as handle:
            yield from _record_lines(handle)


def _chain(*sources: Iterable[str]) -> Iterator[str]:
    for source in sources:
        yield from source


def _unique(lines: Iterable[str], seen: set) -> Iterator[str]:
    """`lines` less those whose hash is in `seen` (which each line given adds to)."""
    for line in lines:
        digest = _line_digest(line)
        if digest not in seen:
            seen.add(digest)
            yield line


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """Each of `lines` and a newline into `path`, atomically and streamed (`atomic_write_pieces`:
    replaced whole or not at all, never held in memory; `lines` may read `path` itself)."""
    atomic_write_pieces(path, (line + "\n" for line in lines))
