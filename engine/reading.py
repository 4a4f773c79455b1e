"""Reading: inputs -> decoded 16 kHz audio and its speech regions, ahead of the device, bounded
in memory.

    inputs (paths, entry.Entry, file objects, sample arrays)
      -> AudioPrefetcher: on `workers` threads, each input decoded (audio.py; a long file to a
         spool on disk, spool.py) and, when asked, its speech found (vad.py, `speech_finder`)
      -> LoadedInput per input, as each finishes decoding -> scheduler.WindowScheduler,
         which `release`s the audio of the files it is done with

At most `max_ahead` files are in flight and decoding pauses while more than `max_seconds` of
decoded audio wait in memory (dataset row groups held for later rows counted in, at the bytes a
second of samples takes). An input that cannot be read is a LoadedInput with an `error`:
INPUT when the input is at fault (final), RUN otherwise (`--resume` tries it again).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from . import datasets, records
from .audio import N_SAMPLES, SAMPLE_RATE, AudioInput, input_name
from .records import INPUT, RUN, one_line
from .lookahead import Lookahead
from .spool import ArrayAudio, SpooledAudio, Windowed, decode_bounded
from .storage import is_url
from .vad import VadOptions, speech_regions_streaming
from .vad import check_available as check_vad_available

SAMPLE_BYTES = 4 * SAMPLE_RATE  # a second of float32 samples: the unit of the bound on audio in memory
SpeechFinder = Callable[[Windowed], Optional[list[tuple[int, int]]]]  # a file's speech regions (samples)


@dataclasses.dataclass
class LoadedInput:
    index: int  # position in the inputs
    item: AudioInput
    audio: Optional[Windowed]  # 16 kHz mono samples, in memory or spooled to disk; None when `error`
    error: Optional[str] = None
    speech: Optional[list[tuple[int, int]]] = None  # voice-activity regions (samples), when asked for
    error_kind: Optional[str] = None  # INPUT or RUN with `error`

    @property
    def duration(self) -> float:
        """Seconds of the decoded file (before voice activity keeps only its speech)."""
        return 0.0 if self.audio is None else self.audio.n_samples / SAMPLE_RATE

    @property
    def seconds_in_memory(self) -> float:
        """Seconds of its samples held in memory (a spooled file holds none)."""
        return self.duration if isinstance(self.audio, ArrayAudio) else 0.0

    def close(self) -> None:
        """Release a spooled file's disk space (nothing to do for samples in memory)."""
        if isinstance(self.audio, SpooledAudio):
            self.audio.close()


def error_record(loaded: LoadedInput, reason: str, kind: str = RUN) -> dict:
    """The record of a loaded input that failed later (preparing, decoding, assembling it)."""
    name = input_name(loaded.item)
    return records.failure(name, f"{name}: {reason}", kind)


def speech_finder(vad: Optional[VadOptions], skip_non_speech: bool, chunked: bool) -> Optional[SpeechFinder]:
    """What finds a file's speech regions (samples), if they are needed: every file's with `vad`;
    with non-speech skipped, those of files longer than one window (a shorter one is decoded
    whole). VAD's availability is checked here, once, before any record: not one error per file."""
    if vad is None and not skip_non_speech:
        return None
    check_vad_available()
    if vad is not None:
        # chunked: regions of at most one window, split at their longest pause
        vad = dataclasses.replace(vad, max_speech_duration_s=29.0) if chunked else vad
        return lambda audio: speech_regions_streaming(audio.pieces(), vad)
    return lambda audio: speech_regions_streaming(audio.pieces()) if audio.n_samples > N_SAMPLES else None


class AudioPrefetcher:
    """Decodes inputs on `workers` threads ahead of the consumer (iterated: in input order;
    `stream`: as they finish decoding). At most `max_ahead` files are in flight and decoding pauses while more than
    `max_seconds` of decoded audio wait in memory to be `release`d (with the row groups of
    audio the process's dataset tables hold, `datasets.TABLES`, which it bounds to
    `max_seconds` of sample bytes). A file longer than
    `spool_after_s` is decoded to a spool on disk in `spool_dir` (engine/spool.py) and framed
    from there, so no file holds more than that much audio in memory, whatever its length.
    `items` may be a list or an iterator that yields inputs as they are listed (a bulk run's
    listing thread): they are taken from it as decoding reaches them (`Lookahead`)."""

    def __init__(self, items: Iterable[AudioInput], workers: int = 2, max_ahead: int = 32,
                 max_seconds: float = 3600.0, spool_after_s: float = 600.0, spool_dir: Optional[str] = None,
                 find_speech: Optional[SpeechFinder] = None):
        """`find_speech` (voice-activity detection, `speech_finder`) runs on the same threads,
        after decoding."""
        self.items = Lookahead(items)
        self.workers, self.max_ahead, self.max_seconds = max(1, workers), max_ahead, max_seconds
        self.spool_after, self.spool_dir = int(spool_after_s * SAMPLE_RATE), spool_dir
        self.find_speech = find_speech
        self._buffered = 0.0
        self._lock = threading.Lock()
        datasets.TABLES.groups.bound(int(max_seconds * SAMPLE_BYTES))

    def seconds_held(self) -> float:
        """Decoded audio waiting in memory, and the dataset row groups held, in seconds of samples."""
        return self._buffered + datasets.TABLES.groups.held_bytes() / SAMPLE_BYTES

    def release(self, seconds: float) -> None:
        """A consumer is done with `seconds` of audio it was given."""
        with self._lock:
            self._buffered -= seconds

    def _load(self, index: int, item: AudioInput) -> LoadedInput:
        loaded = LoadedInput(index, item, None)
        try:
            loaded.audio = self._decode(item)
            if self.find_speech is not None:
                loaded.speech = self.find_speech(loaded.audio)
        except ValueError as err:  # the input's own fault (AudioDecodeError is one): final
            loaded.close()
            return LoadedInput(index, item, None, one_line(err), error_kind=INPUT)
        except Exception as err:  # noqa: BLE001 - out of memory, a full spool disk: retried by --resume
            loaded.close()
            return LoadedInput(index, item, None, f"{input_name(item)}: {one_line(err)}", error_kind=RUN)
        with self._lock:
            self._buffered += loaded.seconds_in_memory
        return loaded

    def _decode(self, item: AudioInput) -> Windowed:
        if not isinstance(item, np.ndarray):
            return decode_bounded(item, self.spool_after, self.spool_dir)
        audio = np.asarray(item, np.float32)
        if audio.ndim != 1 or audio.shape[0] == 0:
            raise ValueError(f"{input_name(item)}: expected non-empty mono samples, got shape {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError(f"{input_name(item)}: samples contain NaN or infinity")
        return ArrayAudio(audio)

    def __iter__(self) -> Iterator[LoadedInput]:
        """The files in input order."""
        with PrefetchStream(self, ordered=True) as stream:
            while (loaded := stream.next()) is not None:
                yield loaded

    def stream(self) -> "PrefetchStream":
        """The files taken one at a time with `PrefetchStream.next` as they finish decoding,
        which can also answer at once that none is decoded yet (a `with` block ends the decoding
        threads). A file still decoding holds back none decoded after it."""
        return PrefetchStream(self, ordered=False)


NOT_READY = object()  # PrefetchStream.next(block=False): no file is decoded yet

class PrefetchStream:
    """An `AudioPrefetcher`'s files on its decoding threads, submitted in input order: given in
    that order (`ordered`), or each as soon as it is decoded (a long file being decoded does not
    hold back the short ones behind it). Given as decoded, with two or more threads, a long
    local file (`LongFiles`) among the next inputs is started early, one at a time: its
    sequential windows then run beside the short files' batches instead of trailing the run."""

    def __init__(self, prefetcher: AudioPrefetcher, ordered: bool = True):
        self.prefetcher, self.ordered = prefetcher, ordered
        self._pending: collections.deque = collections.deque()
        self._submitted = 0  # inputs before this one are all submitted
        self._pool = concurrent.futures.ThreadPoolExecutor(prefetcher.workers, thread_name_prefix="whisper-nnx-audio")
        self._long = None if ordered or prefetcher.workers < 2 else LongFiles(prefetcher.items)
        self._long_pending = None  # the long file started early and not yet decoded

    def _submit(self) -> None:
        p = self.prefetcher
        index = self._submitted
        if self._long is not None and (self._long_pending is None or self._long_pending.done()):
            early = self._long.next_after(self._submitted)
            if early is not None:
                index = early
        future = self._pool.submit(p._load, index, p.items.take(index))
        self._pending.append(future)
        if index == self._submitted:
            self._submitted += 1
            while self._long is not None and self._long.started(self._submitted):
                self._submitted += 1  # started early already
        else:
            self._long_pending = future

    def next(self, block: bool = True):
        """The next file (`LoadedInput`), None when every file was given, or, with `block`
        False, NOT_READY while no file is decoded yet."""
        p = self.prefetcher
        while (len(self._pending) < p.max_ahead and p.items.has(self._submitted, wait=not self._pending)
               and (p.seconds_held() < p.max_seconds or not self._pending)):
            self._submit()
        if not self._pending:
            return None
        if self.ordered:
            if not block and not self._pending[0].done():
                return NOT_READY
            return self._pending.popleft().result()
        done = next((f for f in self._pending if f.done()), None)
        if done is None:
            if not block:
                return NOT_READY
            concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            done = next(f for f in self._pending if f.done())
        self._pending.remove(done)
        return done.result()

    def wait_for_file(self, other: Optional[concurrent.futures.Future]) -> bool:
        """Wait until a file is decoded or `other` is done (None: not at all); True when a file
        is decoded and `other` is not done (the caller can take the file before `other`)."""
        if other is None or other.done() or not self._pending:
            return False
        files = [self._pending[0]] if self.ordered else list(self._pending)  # what `next` can give
        concurrent.futures.wait([*files, other], return_when=concurrent.futures.FIRST_COMPLETED)
        return not other.done() and any(f.done() for f in files)

    def close(self) -> None:
        """Stop decoding: files not started are dropped, the ones under way finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.prefetcher.items.close()

    def __enter__(self) -> "PrefetchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LongFiles:
    """Which of the inputs ahead are long local files: scanned as far as they are listed, up to
    `SCAN` inputs ahead (their sizes by `os.stat`; anything not a local path counts as short), a
    file is long when it has at least `MIN_BYTES` and `FACTOR` times the median size of the last
    `SCAN` inputs scanned (a few minutes of audio among clips; a corpus of similar files has none)."""

    SCAN, FACTOR, MIN_BYTES = 256, 8, 4 << 20

    def __init__(self, items: "Iterable[AudioInput] | Lookahead"):
        self.items = items if isinstance(items, Lookahead) else Lookahead(items)
        self._scanned = 0
        self._recent: collections.deque = collections.deque(maxlen=self.SCAN)  # sizes of the last scanned
        self._long: collections.deque = collections.deque()  # long indices not yet started, in order
        self._started: set[int] = set()

    def _scan(self, end: int) -> None:
        """Scan the inputs listed so far, up to `end`."""
        stretch = range(self._scanned, end)
        stretch = stretch[:next((n for n, i in enumerate(stretch) if not self.items.has(i, wait=False)), len(stretch))]
        sizes = [_local_size(self.items.held(i)) for i in stretch]
        self._scanned = stretch.stop
        self._recent.extend(sizes)
        median = sorted(self._recent)[len(self._recent) // 2] if self._recent else 0
        self._long.extend(i for i, size in zip(stretch, sizes)
                          if size >= self.MIN_BYTES and size >= self.FACTOR * median)

    def next_after(self, frontier: int) -> Optional[int]:
        """A long file among the `SCAN` inputs from `frontier` on, not started yet (now marked
        started), or None."""
        self._scanned = max(self._scanned, frontier)  # inputs before the frontier were reached in order
        self._scan(frontier + self.SCAN)  # only what is listed already: never waits for a listing
        while self._long and self._long[0] < frontier:
            self._long.popleft()  # reached in input order before it was started early
        if self._long and self._long[0] < frontier + self.SCAN:
            index = self._long.popleft()
            if index > frontier:  # the frontier itself is next in order anyway
                self._started.add(index)
                return index
        return None

    def started(self, index: int) -> bool:
        """Whether `index` was started early (the frontier skips it; asked once per index)."""
        if index in self._started:
            self._started.discard(index)
            return True
        return False


def _local_size(item: AudioInput) -> int:
    """Bytes of a local file named by a path (0 for anything else, or a file not there)."""
    if not isinstance(item, (str, os.PathLike)) or is_url(str(item)):
        return 0
    try:
        return os.stat(item).st_size
    except OSError:
        return 0
