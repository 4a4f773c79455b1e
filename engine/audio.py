"""Audio constants and decoding: any audio/video file -> float32 16 kHz mono samples.

Decoding runs on the host with PyAV (the ffmpeg libraries, no ffmpeg CLI needed): the first
audio stream is decoded, converted to planar float at the file's own rate, down-mixed to mono
by averaging the channels (what the ffmpeg CLI's `-ac 1` to s16 in openai-whisper's
`load_audio` amounts to for stereo; libswresample's float down-mix would instead scale stereo
by 1/sqrt(2)), then resampled to 16 kHz by soxr in streaming mode so a long file never holds
more than its 16 kHz copy plus one decoded frame in memory. `iter_decoded` yields the same
samples piece by piece for callers that must not hold the whole file (engine/spool.py). An
entry's span (a NeMo manifest's offset) is decoded from a seek to shortly before it where the
file's timestamps count samples (WAV, FLAC, MP3, MP4, Ogg; not Matroska's milliseconds), else
from the start; either way its samples are those of the whole file's decode.

Every failure a user can cause (missing, empty, corrupt or truncated file, no audio stream,
zero samples, NaN/inf samples) raises `AudioDecodeError` with a one-line reason, so callers
can record the reason per input and carry on with the rest of a batch.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

import numpy as np

from .entry import Entry, NamedSamples, open_url_or_path
from .pcm import PIECE_SAMPLES, float_planes, mono

if TYPE_CHECKING:  # PyAV (~0.2 s to import) and soxr load on the first decode, not with the engine
    import av
    import soxr


def _exact_div(x: int, y: int) -> int:
    """x / y, asserting that y divides x (the constants below must tile each other exactly)."""
    assert x % y == 0, f"{x} is not divisible by {y}"
    return x // y


SAMPLE_RATE = 16000  # Hz, the only rate Whisper's features are defined at
N_FFT = 400  # samples per STFT window (25 ms)
HOP_LENGTH = 160  # samples between STFT frames (10 ms)
CHUNK_LENGTH = 30  # seconds of audio per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = _exact_div(N_SAMPLES, HOP_LENGTH)  # 3000 mel frames per window
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's second conv has stride 2: 320 samples
FRAMES_PER_SECOND = _exact_div(SAMPLE_RATE, HOP_LENGTH)  # 100 mel frames per second (10 ms)
FRAMES_PER_TIMESTAMP = _exact_div(N_SAMPLES_PER_TOKEN, HOP_LENGTH)  # 2 mel frames per timestamp step (20 ms)
TOKENS_PER_SECOND = _exact_div(SAMPLE_RATE, N_SAMPLES_PER_TOKEN)  # 50 positions/s (20 ms)
N_AUDIO_CTX = _exact_div(N_FRAMES, 2)  # 1500 encoder positions per window
TIME_PRECISION = 1 / TOKENS_PER_SECOND  # 0.02 s, one timestamp token step

# A file counts as truncated when it decodes to less than its header's duration by more than
# both of these (headers of VBR MP3s without a Xing frame only estimate their duration).
_TRUNCATION_SLACK_S = 0.5
_TRUNCATION_SLACK_FRACTION = 0.1

# A span (a NeMo manifest's offset) starting this far into its file or more is decoded from a
# seek to _SEEK_BACK_S before its start, and at least _SPAN_WARM_UP_S of that decoded and dropped
# (the decoder's and the resampler's warm-up: the samples then equal a full decode's).
_SEEK_FROM_S = 2.0
_SEEK_BACK_S = 1.0
_SPAN_WARM_UP_S = 0.5


class AudioDecodeError(ValueError):
    """An input could not be turned into audio samples; `reason` is one line for reports."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _reason(exc: BaseException) -> str:
    """ffmpeg's own short description of a failure (no errno, no path), else its first line."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_stream(stream: BinaryIO, name: str) -> av.container.InputContainer:
    """A binary file object (a dataset row's bytes, a download, an open file) as a container."""
    import av

    try:
        return av.open(stream, mode="r")
    except EOFError as e:
        raise AudioDecodeError(name, "file ends before any audio (truncated)") from e
    except av.error.FFmpegError as e:
        reason = "file is empty (0 bytes)" if _stream_is_empty(stream) else \
            f"not a readable audio/video file ({_reason(e)})"
        raise AudioDecodeError(name, reason) from e


def _stream_is_empty(stream: BinaryIO) -> bool:
    try:
        stream.seek(0)
        return not stream.read(1)
    except (OSError, ValueError):
        return False


def named_stream(data: bytes, name: str) -> io.BytesIO:
    """`data` as a binary file object whose `name` (records, errors) is `name`."""
    stream = io.BytesIO(bytes(data))
    stream.name = name
    return stream


def source_name(source: "AudioSource") -> str:
    """How an input is named in errors and records: its path, an entry's or a file object's `name`."""
    if isinstance(source, Entry):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<stream>"))


def _open_container(path: Path) -> av.container.InputContainer:
    import av

    if not path.exists():
        raise AudioDecodeError(path, "file not found")
    if path.is_dir():
        raise AudioDecodeError(path, "is a directory, not a file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except EOFError as e:  # av's EOFError: the container ended inside its own header
        raise AudioDecodeError(path, "file ends before any audio (truncated)") from e
    except av.error.FFmpegError as e:
        raise AudioDecodeError(path, f"not a readable audio/video file ({_reason(e)})") from e


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.AudioStream:
    if container.streams.audio:
        return container.streams.audio[0]
    kinds = sorted({s.type for s in container.streams})
    if not kinds or container.format.name == "tty":  # ffmpeg reads plain text as ANSI "video"
        raise AudioDecodeError(path, "not an audio/video file (no media streams found)")
    raise AudioDecodeError(path, f"no audio stream (found only: {', '.join(kinds)})")


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """The duration the file's headers promise, 0.0 when they promise nothing."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    # The container's duration covers every stream; it speaks for the audio only when alone.
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return 0.0


def _native_mono_chunks(
    container: av.container.InputContainer, stream: av.AudioStream, path: Path,
    frames: Optional[Iterable[av.AudioFrame]] = None,
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (float32 mono samples [n], sample rate) for the decoded frames at the native rate:
    of the whole stream joined into pieces of about PIECE_SAMPLES, of `frames` (a span's, after
    a seek) one frame at a time, so a span decodes no further than it needs. 16-bit, 32-bit and
    float samples are converted by `pcm.float_planes`, any other format by swresample (to the
    same values); mono kept as it is, channels averaged."""
    import av

    held, count, rate = [], 0, 0
    piece = PIECE_SAMPLES if frames is None else 1

    def joined() -> tuple[np.ndarray, int]:
        nonlocal held, count
        piece = held[0] if len(held) == 1 else np.concatenate(held)
        held, count = [], 0
        return piece, rate

    try:
        for x, frame_rate in _float_frames(container.decode(stream) if frames is None else frames):
            if held and frame_rate != rate:  # the rate changed: hand on what is held first
                yield joined()
            rate = frame_rate
            held.append(mono(x))
            count += held[-1].size
            if count >= piece:
                yield joined()
        if held:
            yield joined()
    except av.error.FFmpegError as e:
        raise AudioDecodeError(path, f"corrupt or truncated audio ({_reason(e)})") from e


def _float_frames(frames: Iterable[av.AudioFrame]) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 samples [C, n], sample rate) per decoded frame: the common formats converted by
    `pcm.float_planes`, any other by swresample, whose delay line is flushed after the last."""
    import av

    to_float = None
    for frame in frames:
        planes = float_planes(frame)
        if planes is not None:
            yield planes, frame.sample_rate
            continue
        to_float = to_float or av.AudioResampler(format="fltp", layout=None, rate=None)
        for converted in to_float.resample(frame):
            yield converted.to_ndarray(), converted.sample_rate
    for converted in to_float.resample(None) if to_float is not None else ():
        yield converted.to_ndarray(), converted.sample_rate


def _decoded_pieces(
    container: av.container.InputContainer, path: Path, sample_rate: int
) -> Iterator[np.ndarray]:
    """Decode the first audio stream piece by piece: float32 mono pieces [n_i] at `sample_rate`.

    Holds one decoded frame and soxr's delay line, never the whole file. Raises AudioDecodeError
    as soon as a problem shows (non-finite samples, a rate change), and after the last sample for
    problems only the end reveals (no samples at all, a file shorter than its header declares):
    a consumer must not treat what it received as the file's audio until the iterator is spent.
    """
    stream = _audio_stream(container, path)
    n_native, in_rate, last = yield from _resampled(_native_mono_chunks(container, stream, path), path,
                                                    sample_rate)
    # Decoders stop quietly at a cut inside some formats (e.g. MP3); catch the cut when the
    # header promised much more. The margin tolerates estimated durations and codec padding.
    declared, decoded = _declared_seconds(container, stream), n_native / in_rate
    if declared - decoded > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * declared):
        raise AudioDecodeError(
            path, f"truncated: decoded {decoded:.2f} s of the {declared:.2f} s the header declares"
        )
    yield last


def _resampled(chunks: Iterator[tuple[np.ndarray, int]], path: Path, sample_rate: int):
    """Generator: native `chunks` resampled to `sample_rate`, piece by piece, but for the last
    piece (soxr's flushed delay line), which it returns with (native samples, native rate)."""
    import soxr

    resampler: soxr.ResampleStream | None = None
    in_rate = 0
    n_native = 0
    for x, rate in chunks:
        if not np.isfinite(x).all():
            raise AudioDecodeError(path, "audio contains non-finite samples (NaN or inf)")
        if not in_rate:
            in_rate = rate
            if in_rate != sample_rate:  # at the same rate soxr gives its input back, bit for bit
                resampler = soxr.ResampleStream(in_rate, sample_rate, 1, "float32", "HQ")
        elif rate != in_rate:
            raise AudioDecodeError(
                path, f"sample rate changes inside the stream ({in_rate} -> {rate} Hz)"
            )
        n_native += x.size
        yield x if resampler is None else resampler.resample_chunk(x)
    if n_native == 0:
        raise AudioDecodeError(path, "no audio samples could be decoded (truncated or empty)")
    last = resampler.resample_chunk(np.zeros(0, np.float32), last=True) if resampler is not None \
        else np.zeros(0, np.float32)
    return n_native, in_rate, last


# a path, a binary file object (read from its start), an input entry (engine/entry.py)
AudioSource = Union[str, os.PathLike, BinaryIO, Entry]
AudioInput = Union[AudioSource, np.ndarray]  # what the engine transcribes: a source, or 16 kHz samples [N]


def input_name(item: AudioInput) -> str:
    """How an input is named in records and errors: its path, a file object's name, a named
    array's name (entry.NamedSamples), or <array>."""
    if isinstance(item, np.ndarray):
        return item.name if isinstance(item, NamedSamples) else "<array>"
    return source_name(item)


def _span_of(pieces: Iterator[np.ndarray], name: str, start: int, end: Optional[int], sample_rate: int,
             at: int = 0) -> Iterator[np.ndarray]:
    """The samples [start, end) of the decoded `pieces` (to the end for None), the first piece
    being sample `at`; the decoding stops once the span is complete."""
    for piece in pieces:
        lo, hi = max(start - at, 0), piece.size if end is None else min(end - at, piece.size)
        at += piece.size
        if hi > lo:
            yield piece[lo:hi]
        if end is not None and at >= end:
            return
    if at <= start:
        raise AudioDecodeError(name, f"offset {start / sample_rate:.3f} s is at or past the end of the audio "
                                     f"({at / sample_rate:.3f} s)")


class _SeekMissed(Exception):
    """A seek cannot be placed on the sample (no timestamps, timestamps coarser than a sample, a
    gap in them): the span is decoded from the start of its file instead."""


def _seeked(container: av.container.InputContainer, path: Path, seek_s: float, latest: int,
            sample_rate: int) -> tuple[int, Iterator[np.ndarray]]:
    """(index at `sample_rate` of the first piece, pieces) of the first audio stream decoded from
    a seek to `seek_s` or before: sample-exact, the first piece at sample `latest` or before
    (else _SeekMissed). Sample n of the full decode is at (pts - start_time) * time_base = n / rate."""
    import av

    stream = _audio_stream(container, path)
    base, rate, origin = stream.time_base, stream.rate, stream.start_time or 0
    if not base or not rate or (base * rate).numerator != 1:
        raise _SeekMissed()
    try:
        container.seek(origin + int(seek_s / base), stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
    except av.error.FFmpegError as err:
        raise _SeekMissed() from err

    def index(frame) -> Optional[int]:
        at = None if frame.pts is None else (frame.pts * (frame.time_base or base) - origin * base) * rate
        return int(at) if at is not None and Fraction(at).denominator == 1 else None

    native = None if first is None or first.sample_rate != rate else index(first)
    step = rate // math.gcd(rate, sample_rate)  # native samples per whole number of output samples
    aligned = None if native is None else -(-native // step) * step
    if aligned is None or native < 0 or aligned * sample_rate // rate > latest:
        raise _SeekMissed()

    def checked(frames: Iterable[av.AudioFrame]) -> Iterator[av.AudioFrame]:
        expected, before = native, latest * rate // sample_rate
        for frame in frames:
            if expected < before and index(frame) != expected:  # a gap before the span: not exact
                raise _SeekMissed()
            expected += frame.samples
            yield frame

    chunks = _native_mono_chunks(container, stream, path, checked(itertools.chain([first], frames)))
    return aligned * sample_rate // rate, _flushed(_resampled(_skipped(chunks, aligned - native), path, sample_rate))


def _skipped(chunks: Iterator[tuple[np.ndarray, int]], n: int) -> Iterator[tuple[np.ndarray, int]]:
    """`chunks` without their first `n` samples."""
    for x, rate in chunks:
        if n < x.size:
            yield x[n:], rate
        n = max(n - x.size, 0)


def _flushed(resampled) -> Iterator[np.ndarray]:
    """The pieces of `_resampled`, its last one included."""
    _, _, last = yield from resampled
    yield last


def _span_pieces(entry: Entry, source: AudioSource, sample_rate: int) -> Iterator[np.ndarray]:
    """The entry's span of what `source` decodes to: decoded from a seek to shortly before its
    start (a long file's spans do not each decode it from its start), else from the start."""
    start = round(entry.offset_s * sample_rate)
    end = None if entry.duration_s is None else start + round(entry.duration_s * sample_rate)
    if entry.offset_s >= _SEEK_FROM_S:
        container, path = _container_of(source)
        started = False
        with container:
            try:
                at, pieces = _seeked(container, path, entry.offset_s - _SEEK_BACK_S,
                                     start - round(_SPAN_WARM_UP_S * sample_rate), sample_rate)
                for piece in _span_of(pieces, entry.name, start, end, sample_rate, at):
                    started = True
                    yield piece
                return
            except _SeekMissed:
                if started:  # pragma: no cover - checked() stops before the span's first sample
                    raise
        if not isinstance(source, (str, os.PathLike)):
            source.close()
            source = _entry_source(entry)  # afresh: the container may have moved or closed it
    yield from _span_of(iter_decoded(source, sample_rate), entry.name, start, end, sample_rate)


def _entry_source(entry: Entry) -> AudioSource:
    """What the entry's audio is decoded from: its opener's path or stream, else its file or URL."""
    try:
        return entry.opener() if entry.opener is not None else open_url_or_path(entry.name)
    except FileNotFoundError as err:  # the input's fault: final, like a missing local file
        raise AudioDecodeError(entry.name, "file not found") from err


def _decoded_entry(entry: Entry, sample_rate: int) -> Iterator[np.ndarray]:
    """`iter_decoded` of what the entry's `opener` gives (else of its file or URL `name`), cut to
    its span; errors name the entry, and an entry naming no audio raises its own `error`."""
    if entry.error is not None:
        raise AudioDecodeError(entry.name, entry.error.removeprefix(f"{entry.name}: "))
    source = _entry_source(entry)
    if entry.offset_s or entry.duration_s is not None:
        pieces = _span_pieces(entry, source, sample_rate)
    else:
        pieces = iter_decoded(source, sample_rate)
    try:
        yield from pieces
    except AudioDecodeError as err:
        if err.path == entry.name:
            raise
        raise AudioDecodeError(entry.name, err.reason) from err


def _container_of(source: Union[str, os.PathLike, BinaryIO]) -> tuple[av.container.InputContainer, Path]:
    """(opened container, the path errors name) of a path or a binary file object."""
    if isinstance(source, (str, os.PathLike)):
        return _open_container(Path(source)), Path(source)
    return _open_stream(source, source_name(source)), Path(source_name(source))


def iter_decoded(path: AudioSource, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The first audio stream of `path` as float32 mono pieces [n_i] at `sample_rate`, in order.

    Concatenated, the pieces are exactly `load_audio(path, sample_rate)`; memory stays at one
    decoded piece (typically a few thousand samples; some may be empty). Errors are the same
    AudioDecodeErrors as load_audio's, raised when reached: opening the file fails at the first
    `next()`, and a truncation or an empty stream only after the last piece, so a consumer must
    drain the iterator before trusting what it received.
    """
    if isinstance(path, Entry):
        yield from _decoded_entry(path, sample_rate)
        return
    container, path = _container_of(path)
    with container:
        yield from _decoded_pieces(container, path, sample_rate)


def load_audio(path: AudioSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of `path` (a path, or a binary file object such as a
    dataset row's bytes in `io.BytesIO`) as float32 mono at `sample_rate`: [N].

    Raises AudioDecodeError (a ValueError) with a one-line reason when the file cannot be
    used; the underlying PyAV exception, if any, is chained as `__cause__`.
    """
    return np.concatenate(list(iter_decoded(path, sample_rate)))


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad on the right or cut `array` along `axis` to exactly `length` entries."""
    size = array.shape[axis]
    if size > length:
        return np.take(array, np.arange(length), axis=axis)
    if size < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - size)
        return np.pad(array, widths)
    return array
