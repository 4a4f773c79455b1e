"""Keeping the device busy over a corpus: windows of many files packed into full batches.

    reading.AudioPrefetcher (audio decoded ahead on threads, bounded) -> files as they are decoded
           -> WindowScheduler: WindowWork.prepare makes each file's job (longform.py), which
              hands out window requests
              -> batches of `batch_size` windows from any files, similar lengths together
              -> WindowWork.decode (windows.py: log-mel, WindowDecoder)
              -> each result back to its job; finished files leave as records

The scheduler only packs batches: everything on the model side comes through the small
`WindowWork` protocol it is given (a fake in tests/test_scheduler.py).

Sequential files each have one window out at a time, so a batch holds `batch_size` files side
by side and a finished file's place is taken by the next one at once. Chunked files hand out
all their windows up front, so a long file fills whole batches by itself. Under several
processes (multi-host) each process schedules its own inputs; every device call is agreed on
first (`multihost.global_max`), so processes with less work join with empty rows.

The device is kept busy (`DeviceLane`): the batches in flight decode side by side on worker
threads, so the next batch's host work and dispatch overlap the one under way; while the
device works, the main thread keeps admitting and preparing the files decoded meanwhile
(`PrefetchStream.wait_for_file`) so that the next batch is full when it is handed over, and
takes windows back and assembles records (written on a thread of their own:
`sink.BackgroundWrites`). Under several processes the lane has one batch at a time on the
calling thread: every process must make the same collective calls in the same order.
"""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

import jax

from whisper_nnx.sharding import multihost

from . import records
from .audio import N_FRAMES, input_name
from .decode.window_decoder import DecodedWindow
from .features import total_frames
from .longform import FileJob, PreparedFile, WindowRequest
from .reading import NOT_READY, AudioPrefetcher, LoadedInput, PrefetchStream, error_record
from .records import one_line
from .spans import chunk_starts
from .spool import Windowed


@dataclass
class _Active:
    loaded: LoadedInput
    job: FileJob
    language: Optional[str]
    language_probs: Optional[dict]


class WindowWork(Protocol):
    """What the scheduler asks of the model side (windows.WindowPipeline; a fake in tests)."""

    def prepare(self, files: list[LoadedInput]) -> list[PreparedFile | BaseException]:
        """Per new file: its long-form job and language, or the exception that file raised."""

    def decode(self, requests: list[WindowRequest]) -> list[DecodedWindow]:
        """One decoded window per request, in order."""


Decoded = list[tuple[WindowRequest, object]]  # per request: its DecodedWindow or the exception


class DeviceLane:
    """Batches on their way through the device, oldest first.

    With `depth` > 1 they run on `depth` worker threads side by side: the next batch's host work
    (its windows, log-mel, prompts) and dispatch happen while the one before decodes, so the
    device does not wait for the host between them (with continuous batching the batches also
    share the decoder's slots, each row of the next taking a slot the last one frees). With 1,
    each runs on the calling thread when handed over. `take` returns the oldest batch's results.
    """

    def __init__(self, decode: Callable[[list[WindowRequest]], Decoded], depth: int):
        self.decode, self.depth = decode, max(1, depth)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.depth, thread_name_prefix="whisper-nnx-device") \
            if self.depth > 1 else None
        self._pending: collections.deque = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def has_room(self) -> bool:
        return len(self._pending) < self.depth

    def submit(self, batch: list[WindowRequest]) -> None:
        if self._pool is None:
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result(self.decode(batch))
            self._pending.append(done)
        else:
            self._pending.append(self._pool.submit(self.decode, batch))

    @property
    def head(self) -> Optional[concurrent.futures.Future]:
        """The oldest batch under way (its future), None when there is none."""
        return self._pending[0] if self._pending else None

    def take(self) -> Decoded:
        """The oldest batch's results, waiting for them if the device is still at it."""
        return self._pending.popleft().result()

    def close(self) -> None:
        """Wait for the batches under way (their results are dropped) and stop the worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


class WindowScheduler:
    """Packs window requests of many files into batches of `batch_size`."""

    def __init__(self, work: WindowWork, batch_size: int,
                 windows_per_file: Callable[[Windowed], int], lookahead: int = 4,
                 max_admitted_s: float = 3600.0, in_flight: int = 2):
        """`lookahead` batches' worth of windows are kept ready, so that each batch can be
        picked from windows of similar length. `in_flight`: batches handed to the device at
        once, decoding side by side (2: the next is prepared and dispatched while one decodes;
        1: one at a time, as several processes always run)."""
        self.work, self.batch_size = work, batch_size
        self.windows_per_file, self.lookahead = windows_per_file, lookahead
        self.max_admitted_s = max_admitted_s  # audio in memory held by admitted files (spooled: none)
        self.in_flight = in_flight

    def run(self, files: AudioPrefetcher) -> Iterator[tuple[int, dict]]:
        """(input index, record) for every input, in the order files finish. A failure that
        belongs to one file (preparing it, taking a window back, assembling its transcript)
        becomes that file's error record and the run goes on; a failing device batch is
        retried in halves, down to single windows, before a file is given up."""
        lockstep = jax.process_count() > 1  # every process makes the same calls, in order
        lane = DeviceLane(self._decode_isolated, 1 if lockstep else self.in_flight)
        try:
            with files.stream() as source:
                yield from self._run(files, source, lane, lockstep)
        finally:
            lane.close()

    def _run(self, files: AudioPrefetcher, source: PrefetchStream, lane: DeviceLane, lockstep: bool
             ) -> Iterator[tuple[int, dict]]:
        exhausted = False
        queue: collections.deque[WindowRequest] = collections.deque()
        active: dict[int, _Active] = {}  # id(job) -> file
        while True:
            # Admit files until the queue can fill a batch; new files are prepared together.
            arrivals: list[LoadedInput] = []
            expected = len(queue)
            held = sum(f.loaded.seconds_in_memory for f in active.values())
            while not exhausted and expected < self.lookahead * self.batch_size \
                    and (held < self.max_admitted_s or not (active or arrivals)):
                # Wait for a file only when the device would otherwise have nothing to do (or,
                # under lockstep, always, as before): else take the files already decoded.
                waiting = lockstep or (not len(lane) and expected < self.batch_size)
                loaded = source.next(block=waiting)
                if loaded is NOT_READY:
                    break
                if loaded is None:
                    exhausted = True
                elif loaded.error is not None:
                    yield loaded.index, records.failure(input_name(loaded.item), loaded.error, loaded.error_kind)
                else:
                    arrivals.append(loaded)
                    expected += self.windows_per_file(loaded.audio)
                    held += loaded.seconds_in_memory
            for loaded, prepared in zip(arrivals, self._prepare(arrivals)):
                if isinstance(prepared, BaseException):
                    files.release(loaded.seconds_in_memory)
                    loaded.close()
                    yield loaded.index, error_record(loaded, f"preparing the file failed: {one_line(prepared)}")
                    continue
                job = prepared.job
                active[id(job)] = _Active(loaded, job, prepared.language, prepared.language_probs)
                yield from self._give_back(active, files, queue, job, lambda j: j.requests())
            yield from self._finished(active, files)
            if multihost.global_max(int(bool(queue) or not exhausted or bool(active) or bool(len(lane)))) == 0:
                return
            queue = self._hand_over(queue, lane, lockstep)
            if self._feed_while_busy(lockstep, exhausted, lane, queue, active) and source.wait_for_file(lane.head):
                continue  # a file was decoded before the batch under way ended: admit it, fill the next batch
            for request, window in lane.take():
                if id(request.job) not in active:
                    continue  # its file failed earlier in this batch
                if isinstance(window, BaseException):
                    yield from self._fail(active, files, request.job, f"decoding failed: {one_line(window)}")
                    continue
                yield from self._give_back(active, files, queue, request.job,
                                           lambda j, r=request, w=window: (j.accept(r, w), j.requests())[1])
            queue = collections.deque(r for r in queue if id(r.job) in active)
            yield from self._finished(active, files)

    def _feed_while_busy(self, lockstep: bool, exhausted: bool, lane: DeviceLane, queue: collections.deque,
                         active: dict) -> bool:
        """Whether to take files decoded while the device works, before its batch returns: the
        lane has room for a batch that is not full yet, and files may be admitted (one process:
        several make the same calls in lockstep)."""
        held = sum(f.loaded.seconds_in_memory for f in active.values())
        return (not lockstep and not exhausted and lane.has_room and len(queue) < self.batch_size
                and held < self.max_admitted_s)

    def _hand_over(self, queue: collections.deque, lane: DeviceLane, lockstep: bool) -> collections.deque:
        """Hand batches to the device: one when none is under way (under lockstep, always one,
        even empty, so that every process makes the call); more, up to the lane's depth, only
        while a full batch waits (a part batch waits for the windows the one under way will
        bring). Returns the windows still waiting."""
        while lane.has_room and (not len(lane) or len(queue) >= self.batch_size) and (queue or not len(lane)):
            batch, queue = self._pick(queue)
            lane.submit(batch)
            if lockstep:
                break
        return queue

    def _prepare(self, arrivals: list[LoadedInput]) -> list[PreparedFile | BaseException]:
        """Jobs of newly admitted files, prepared together (their device calls batched); when
        that fails, one file at a time (one process), so only the file at fault fails. Each
        entry is a PreparedFile or the exception of its file."""
        if not arrivals:
            return []
        try:
            return list(self.work.prepare(arrivals))
        except Exception as err:  # noqa: BLE001 - isolate the file at fault below
            if len(arrivals) == 1 or jax.process_count() > 1:  # processes must make the same calls
                return [err] * len(arrivals)
        out = []
        for loaded in arrivals:
            try:
                out.append(self.work.prepare([loaded])[0])
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    def _give_back(self, active: dict, files: "AudioPrefetcher", queue: collections.deque, job: FileJob,
                   step: Callable[[FileJob], list[WindowRequest]]) -> Iterator[tuple[int, dict]]:
        """Run `step` on a file's job (take a window back, hand out its next requests) and
        queue what it asks for; if it raises, that file ends as an error record."""
        try:
            queue.extend(step(job))
        except Exception as err:  # noqa: BLE001 - this file's failure, not the run's
            yield from self._fail(active, files, job, f"long-form step failed: {one_line(err)}")

    @staticmethod
    def _fail(active: dict, files: "AudioPrefetcher", job: FileJob, reason: str) -> Iterator[tuple[int, dict]]:
        file = active.pop(id(job), None)
        if file is not None:
            files.release(file.loaded.seconds_in_memory)
            file.loaded.close()
            yield file.loaded.index, error_record(file.loaded, reason)

    def _decode_isolated(self, batch: list[WindowRequest]) -> list[tuple[WindowRequest, object]]:
        """(request, DecodedWindow or the exception that decoding it raised) per request. A
        failed batch (out of memory, an XLA error) is retried in halves down to single
        windows, so only the windows that fail alone are lost (one process: several must
        keep making the same device calls, so there the whole batch fails)."""
        try:
            return list(zip(batch, self.work.decode(batch)))
        except Exception as err:  # noqa: BLE001 - retried smaller below
            if len(batch) <= 1 or jax.process_count() > 1:
                return [(request, err) for request in batch]
        half = len(batch) // 2
        return self._decode_isolated(batch[:half]) + self._decode_isolated(batch[half:])

    def _pick(self, queue: collections.deque) -> tuple[list[WindowRequest], collections.deque]:
        """The oldest waiting window and the `batch_size - 1` others closest to it in length
        (a batch decodes as long as its longest row, so similar windows waste less); the rest
        wait, in order."""
        if len(queue) <= self.batch_size:
            return list(queue), collections.deque()
        oldest = queue[0].audio_frames
        nearest = sorted(range(len(queue)), key=lambda i: (abs(queue[i].audio_frames - oldest), i))
        chosen = set(nearest[:self.batch_size])
        return ([r for i, r in enumerate(queue) if i in chosen],
                collections.deque(r for i, r in enumerate(queue) if i not in chosen))

    @staticmethod
    def _finished(active: dict[int, _Active], files: AudioPrefetcher) -> Iterator[tuple[int, dict]]:
        """Records of the files whose jobs are done. `duration_s` is the file's own duration
        (with voice activity, the job decodes only the speech)."""
        for key in [k for k, f in active.items() if f.job.done]:
            file = active.pop(key)
            files.release(file.loaded.seconds_in_memory)
            file.loaded.close()
            extra = {} if file.language_probs is None else {"language_probs": file.language_probs}
            try:
                transcript = file.job.result(input_name(file.loaded.item), language=file.language,
                                             duration_s=round(file.loaded.duration, 3), **extra)
            except Exception as err:  # noqa: BLE001 - this file's failure, not the run's
                yield file.loaded.index, error_record(file.loaded, f"assembling the transcript failed: "
                                                                   f"{one_line(err)}")
                continue
            yield file.loaded.index, transcript


def expected_windows(mode: str, stride_s: float) -> Callable[[Windowed], int]:
    """How many windows a file will put in the queue when admitted (for batch filling)."""
    def count(audio: Windowed) -> int:
        if mode == "sequential":
            return 1
        return len(chunk_starts(total_frames(audio.n_samples) - N_FRAMES, stride_s))

    return count
