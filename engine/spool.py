"""Decoded audio on disk: long files framed one 30 s window at a time, memory independent of length.

A file's whole centred signal in memory (`features.centred_signal`: 200 reflected samples, the
audio, 30 s + 200 zeros) would be 0.9 GB for 4 hours, and voice activity would add a second copy
of the speech. Here a file is decoded piece by piece (`audio.iter_decoded`) into an unnamed
temporary file of float32 samples, and each window reads only the samples it covers, so memory
stays at one decoded piece while spooling and one window per `window()` call afterwards.

Every source offers one interface (`Windowed`), framed as the reference frames a long file:
`n_samples`, `duration` (s), `audio_frames`, and `window(frame)`, equal to
`features.window_samples(features.centred_signal(samples), frame)` for every frame >= 0, bit for bit.

- `SpooledAudio` (from `spool_audio(path, directory)`): the file's samples on disk.
- `SpeechView(source, regions)`: the speech regions of any source put back to back, the samples
  `vad.SpeechMap(regions).collect(samples)` would give, read region by region.
- `ArrayAudio(samples)`: samples already in memory (no centred copy).

Reads use `os.preadv` at an offset (no shared file position, no memory map whose touched pages
would count in the process's resident memory): concurrent reads from several threads are safe,
closing while another thread reads is not. The temporary file has no name (O_TMPFILE, or unlinked
at creation), so its disk space returns when it is closed, garbage-collected, or the process dies.
Cost: 4 bytes per sample on disk, 230 MB per hour of audio, mostly served from the page cache.
Put the directory on a disk: on tmpfs (/dev/shm, a RAM-backed /tmp) the samples would stay in
memory, outside the process's RSS but not outside the machine's.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol

import numpy as np

from .audio import HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE, iter_decoded
from .features import WINDOW_SAMPLES, total_frames

_HALF = N_FFT // 2  # 200: the centred signal starts this many samples before the audio
_SAMPLE_BYTES = np.dtype(np.float32).itemsize
PIECE_SAMPLES = 1 << 20  # samples per piece of `pieces()` (4 MiB, 65.5 s)


class SampleSource(Protocol):
    """What SpeechView reads from."""

    n_samples: int

    def read_into(self, out: np.ndarray, start: int) -> None: ...


class Windowed:
    """A file's samples [n_samples], framed into windows; subclasses read them with `read_into`."""

    n_samples: int

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill float32 `out` [k] with samples [start, start + k); requires 0 <= start, start + k <= n_samples."""
        raise NotImplementedError

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.n_samples / SAMPLE_RATE

    @property
    def audio_frames(self) -> int:
        """Mel frames that hold the audio (the file's mel without its 30 s of padding)."""
        return total_frames(self.n_samples) - N_FRAMES

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) clipped to [0, n_samples): a new float32 array [max(0, hi - lo)]."""
        lo, hi = max(int(start), 0), min(int(stop), self.n_samples)
        out = np.empty(max(hi - lo, 0), np.float32)
        if out.size:
            self.read_into(out, lo)
        return out

    def pieces(self, size: int = PIECE_SAMPLES) -> Iterator[np.ndarray]:
        """All samples in order, `size` at a time: float32 [size] pieces, the last one shorter."""
        for start in range(0, self.n_samples, size):
            yield self.samples(start, start + size)

    def window(self, frame: int) -> np.ndarray:
        """The centred samples behind mel frames [frame, frame + 3000): float32 [WINDOW_SAMPLES]."""
        out = np.empty(WINDOW_SAMPLES, np.float32)
        self.window_into(out, frame)
        return out

    def window_into(self, out: np.ndarray, frame: int) -> None:
        """`window(frame)` written into float32 `out` [WINDOW_SAMPLES] (C-contiguous).

        out[j] is centred sample frame * 160 + j: for centred index s < 200 the reflection
        sample[200 - s] (zero where that is past the end), then the audio, then zeros.
        """
        frame = int(frame)
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        if out.shape != (WINDOW_SAMPLES,) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 [{WINDOW_SAMPLES}], got {out.dtype} {out.shape}")
        first = frame * HOP_LENGTH - _HALF  # the audio sample at out[0] (negative: inside the reflection)
        head = max(-first, 0)  # entries taken by the reflection (<= 200)
        lo, hi = first + head, min(first + WINDOW_SAMPLES, self.n_samples)
        body = max(hi - lo, 0)
        if head:
            out[:head] = self._reflection(head)
        if body:
            self.read_into(out[head:head + body], lo)
        out[head + body:] = 0.0

    def _reflection(self, count: int) -> np.ndarray:
        """The first `count` (<= 200) centred samples of the reflection that ends at centred index
        200: samples [count, count - 1, ..., 1], zero where the audio is shorter: [count]."""
        near = np.zeros(count + 1, np.float32)  # samples [0, count], zeros past the end
        available = min(count + 1, self.n_samples)
        if available > 1:
            self.read_into(near[1:available], 1)
        return near[count:0:-1]


class ArrayAudio(Windowed):
    """Samples already in memory [N], windowed without a centred copy."""

    def __init__(self, samples: np.ndarray):
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples of shape [N], got {samples.shape}")
        self._samples = samples
        self.n_samples = int(samples.shape[0])

    def read_into(self, out: np.ndarray, start: int) -> None:
        out[:] = self._samples[start:start + out.shape[0]]


class SpooledAudio(Windowed):
    """A decoded file's float32 samples in an unnamed temporary file, read at offsets.

    Owns the file: `close()` (or the end of a `with` block, or garbage collection) releases the
    descriptor and with it the disk space. Make it with `spool_audio`.
    """

    def __init__(self, file: BinaryIO, n_samples: int):
        self._file = file
        self.n_samples = int(n_samples)

    @property
    def closed(self) -> bool:
        return self._file.closed

    @property
    def nbytes(self) -> int:
        """Bytes on disk (4 per sample)."""
        return self.n_samples * _SAMPLE_BYTES

    def read_into(self, out: np.ndarray, start: int) -> None:
        if start < 0 or start + out.shape[0] > self.n_samples:
            raise ValueError(f"samples [{start}, {start + out.shape[0]}) outside [0, {self.n_samples})")
        if self._file.closed:
            raise ValueError("read from a closed SpooledAudio")
        _pread_exactly(self._file.fileno(), memoryview(out).cast("B"), start * _SAMPLE_BYTES)

    def close(self) -> None:
        """Release the temporary file (idempotent)."""
        self._file.close()

    def __enter__(self) -> "SpooledAudio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self._file.fileno()}"
        return f"SpooledAudio({self.n_samples} samples, {self.duration:.2f} s, {state})"


def _pread_exactly(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill `buffer` from `fd` at byte `offset` without moving the file position (retries short reads)."""
    while buffer.nbytes:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [buffer], offset)
        else:  # platforms without preadv: one copy through bytes
            data = os.pread(fd, buffer.nbytes, offset)
            buffer[:len(data)] = data
            got = len(data)
        if got == 0:
            raise OSError(f"spool file ended {buffer.nbytes} bytes early at offset {offset}")
        buffer, offset = buffer[got:], offset + got


def spool_audio(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> SpooledAudio:
    """Decode the first audio stream of `path` (float32 16 kHz mono, exactly `load_audio(path)`)
    into an unnamed temporary file in `directory` (None: the system's temp folder).

    Peak memory is one decoded piece, whatever the file's length; disk use is 4 bytes per sample.
    Raises load_audio's AudioDecodeErrors (the temporary file is released first); a full disk
    raises OSError, which is the machine's problem, not the input's.
    """
    return decode_bounded(path, -1, directory)  # nothing held in memory: spooled from the first piece


class SpeechView(Windowed):
    """The speech regions of a source put back to back: the samples of
    `vad.SpeechMap(regions).collect(source samples)`, framed like ArrayAudio of them.

    `source` is any object with `n_samples` and `read_into(out, start)` (SpooledAudio, ArrayAudio,
    another SpeechView) or a 1-D numpy array; `regions` are [start, end) sample ranges of it with
    0 <= start <= end <= source.n_samples, in the order they are collected. The view holds no
    samples and does not own the source: closing the source ends the view.
    """

    def __init__(self, source: SampleSource | np.ndarray, regions: Sequence[tuple[int, int]]):
        self.source = ArrayAudio(source) if isinstance(source, np.ndarray) else source
        self.regions = [(int(start), int(end)) for start, end in regions]
        for start, end in self.regions:
            if not 0 <= start <= end <= self.source.n_samples:
                raise ValueError(f"region [{start}, {end}) outside the source's [0, {self.source.n_samples})")
        lengths = np.array([end - start for start, end in self.regions], dtype=np.int64)  # [R]
        self._ends = np.cumsum(lengths).tolist()  # [R] each region's end in the collected samples
        self.n_samples = int(self._ends[-1]) if self._ends else 0

    def read_into(self, out: np.ndarray, start: int) -> None:
        if start < 0 or start + out.shape[0] > self.n_samples:
            raise ValueError(f"samples [{start}, {start + out.shape[0]}) outside [0, {self.n_samples})")
        done = 0
        while done < out.shape[0]:
            at = start + done
            index = bisect.bisect_right(self._ends, at)  # the region holding collected sample `at`
            region_start, region_end = self.regions[index]
            offset = at - (self._ends[index] - (region_end - region_start))  # into the region
            take = min(region_end - region_start - offset, out.shape[0] - done)
            self.source.read_into(out[done:done + take], region_start + offset)
            done += take


def decode_bounded(path: str | os.PathLike, max_in_memory: int,
                   directory: str | os.PathLike | None = None) -> ArrayAudio | SpooledAudio:
    """Decode `path` (exactly `load_audio(path)`) into memory while it has at most
    `max_in_memory` samples, else into a spool on disk: a file of any length costs at most
    `max_in_memory` samples of memory (plus one decoded piece), whatever it decodes to
    (-1: always spooled).

    The decision is made while decoding (headers can lie about durations); the pieces decoded
    so far move to the spool when the limit is passed.
    """
    pieces: list[np.ndarray] = []
    held = 0
    file: BinaryIO | None = None
    try:
        for piece in iter_decoded(path):
            piece = np.ascontiguousarray(piece, dtype=np.float32)
            if file is None and held + piece.size > max_in_memory:
                file = tempfile.TemporaryFile(mode="w+b", dir=directory, prefix="whisper-nnx-spool-")
                for earlier in pieces:
                    file.write(memoryview(earlier).cast("B"))
                pieces = []
            if file is None:
                pieces.append(piece)
            else:
                file.write(memoryview(piece).cast("B"))
            held += piece.size
        if file is None:
            return ArrayAudio(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))
        file.flush()
    except BaseException:
        if file is not None:
            file.close()
        raise
    return SpooledAudio(file, held)
