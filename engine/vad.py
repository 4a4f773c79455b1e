"""Voice activity detection with Silero VAD (ONNX): find the speech in long recordings, skip the silence.

Part of the base install (skipping stretches without speech is on by default). The Silero v6
weights (MIT, Silero Team) ship in this package, `assets/silero_vad_v6.onnx` with its license
beside it (the file faster-whisper 1.2.1's wheel carries, unchanged), and are checked against
their sha256 when loaded. The region logic reproduces faster-whisper's `get_speech_timestamps`
exactly, so the same options keep the same audio.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE

FRAME = 512  # samples per speech probability (32 ms at 16 kHz)
CONTEXT = 64  # samples of the previous frame that the model sees before each frame
STATE = (1, 1, 128)  # shape of each LSTM state (h, c) carried from frame to frame
CUT_SILENCE = SAMPLE_RATE * 98 / 1000  # samples: a silence longer than this may end an over-long region
WEIGHTS = Path(__file__).parent / "assets" / "silero_vad_v6.onnx"  # Silero VAD v6, MIT (LICENSE.silero-vad)
WEIGHTS_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"
INSTALL = "reinstall whisper-nnx (pip install whisper-nnx installs onnxruntime and ships the weights)"


# Chunked long-form's default pause (faster-whisper's batched pipeline's): regions cut at short
# pauses pack fuller 30 s chunks (25 -> 21 windows on the 10-minute benchmark reading, WER 2.51 -> 2.27).
CHUNKED_MIN_SILENCE_MS = 160


class VadUnavailable(ValueError):
    """onnxruntime is not installed, or the Silero weights are missing or altered."""


@dataclass(frozen=True)
class VadOptions:
    """When a run of frames counts as speech (faster-whisper's `VadOptions` and defaults)."""

    threshold: float = 0.5  # a frame with probability >= threshold is speech
    neg_threshold: float | None = None  # below it silence, in between no change (None: max(threshold - 0.15, 0.01))
    min_speech_duration_ms: int = 0  # drop regions this short or shorter (before padding)
    max_speech_duration_s: float = float("inf")  # split longer regions, at their last silence > 98 ms if any
    min_silence_duration_ms: int = 2000  # a region ends only after this much silence (chunked: see
    # CHUNKED_MIN_SILENCE_MS, what `TranscribeOptions.from_kwargs` and the CLI take there unless told)
    speech_pad_ms: int = 400  # widen each region by this much on both sides


def _weights() -> bytes:
    """The bundled Silero ONNX model, checked against its sha256."""
    path = Path(WEIGHTS)
    if not path.is_file():
        raise VadUnavailable(f"the Silero VAD weights ({path}) are missing: {INSTALL}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise VadUnavailable(f"the Silero VAD weights ({path}) are damaged or altered: sha256 {digest}, "
                             f"expected {WEIGHTS_SHA256}: {INSTALL}")
    return data


@functools.cache
def _session(threads: int):
    """One onnxruntime CPU session per thread count, loaded on first use."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise VadUnavailable(f"voice activity detection needs onnxruntime: {INSTALL}") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(_weights(), options, providers=["CPUExecutionProvider"])


def speech_probabilities(audio: np.ndarray, *, threads: int = 1, batch_frames: int = 4096) -> np.ndarray:
    """Silero's speech probability for each 512-sample frame of 16 kHz audio: [N] -> [N // 512 + 1].

    The model encodes a batch of frames at once and runs its LSTM through them in order, so the
    recurrent state is carried across batches; `batch_frames` only bounds memory. Equal to
    faster-whisper's except in the last frame when N % 512 > 448: it zeroes that frame's last 64
    samples (a write through a view); we feed them.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape [N], got {audio.shape}")
    return speech_probabilities_streaming([audio], threads=threads, batch_frames=batch_frames)


def _blocks(pieces: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of 1-D pieces [n_i] into float32 blocks of exactly `size` samples, then the
    remainder [0 <= r < size], which is always yielded (empty when the total divides evenly): the
    last block is the only one shorter than `size`. Holds at most one block and one piece."""
    block, filled = np.empty(size, np.float32), 0
    for piece in pieces:
        piece = np.asarray(piece, dtype=np.float32)
        if piece.ndim != 1:
            raise ValueError(f"expected mono pieces of shape [n], got {piece.shape}")
        at = 0
        while at < piece.size:
            take = min(size - filled, piece.size - at)
            block[filled : filled + take] = piece[at : at + take]
            filled, at = filled + take, at + take
            if filled == size:
                yield block
                block, filled = np.empty(size, np.float32), 0
    yield block[:filled]


def _streamed_probabilities(
    pieces: Iterable[np.ndarray], threads: int, batch_frames: int
) -> tuple[np.ndarray, int]:
    """Probabilities [N // 512 + 1] of the pieces' concatenation [N], and N, holding one batch.

    The signal is framed as the reference frames it: blocks of `batch_frames` frames, each frame
    seeing the last CONTEXT samples of the frame before (zeros for the first), the remainder
    zero-padded to whole frames plus one. The batches depend only on the concatenation, so pieces
    of any lengths give the same probabilities bit for bit.
    """
    session = _session(threads)
    h = c = np.zeros(STATE, np.float32)
    previous = np.zeros(CONTEXT, np.float32)  # the end of the frame before the block (zeros at the start)
    out, n_samples = [], 0
    for block in _blocks(pieces, batch_frames * FRAME):
        n_samples += block.size
        if block.size < batch_frames * FRAME:  # the remainder: zero-padded to whole frames, and a whole
            # frame of zeros when it divides evenly (the reference's padding)
            block = np.pad(block, (0, FRAME - block.size % FRAME))
        frames = block.reshape(-1, FRAME)
        context = np.concatenate([previous[None], frames[:-1, -CONTEXT:]])
        probs, h, c = session.run(None, {"input": np.concatenate([context, frames], 1), "h": h, "c": c})
        out.append(probs.reshape(-1))
        previous = frames[-1, -CONTEXT:].copy()
    return np.concatenate(out), n_samples


def speech_probabilities_streaming(
    pieces: Iterable[np.ndarray], *, threads: int = 1, batch_frames: int = 4096
) -> np.ndarray:
    """`speech_probabilities` of the concatenation of 16 kHz pieces [n_i] -> [N // 512 + 1], bit-exact,
    without ever holding the whole signal (memory: one batch of `batch_frames` frames, 8 MB by default).

    The pieces may have any lengths (including 0); `batch_frames` must match the in-memory call's for
    the results to be identical bit for bit.
    """
    return _streamed_probabilities(pieces, threads, batch_frames)[0]


def speech_regions_streaming(
    pieces: Iterable[np.ndarray], options: VadOptions = VadOptions(), *, threads: int = 1,
    batch_frames: int = 4096,
) -> list[tuple[int, int]]:
    """`speech_regions` of the concatenation of 16 kHz pieces [n_i]: [(start, end)] in samples, sorted
    and disjoint, holding one batch of audio and the probabilities (one float32 per 512 samples)."""
    probs, n_samples = _streamed_probabilities(pieces, threads, batch_frames)
    return regions_from_probabilities(probs, n_samples, options)


def _raw_regions(probs: np.ndarray, n_samples: int, o: VadOptions) -> list[list[int]]:
    """The hysteresis pass over probabilities [F]: [start, end) sample offsets of speech before padding.

    A region opens at a frame >= threshold and closes at the first frame < neg_threshold of a
    silence lasting min_silence (a shorter silence is forgiven). A region that outgrows
    max_speech is cut at the last silence over 98 ms, or right there if it had none. Offsets of 0
    mean "unset", as in the reference (a silence never starts at sample 0).
    """
    neg = o.neg_threshold if o.neg_threshold is not None else max(o.threshold - 0.15, 0.01)
    # Compared in float32, as NumPy 2 compares the reference's float32 probabilities with Python floats.
    loud = (probs >= np.float32(o.threshold)).tolist()
    quiet = (probs < np.float32(neg)).tolist()
    min_speech = SAMPLE_RATE * o.min_speech_duration_ms / 1000
    min_silence = SAMPLE_RATE * o.min_silence_duration_ms / 1000
    pad = SAMPLE_RATE * o.speech_pad_ms / 1000
    max_speech = SAMPLE_RATE * o.max_speech_duration_s - FRAME - 2 * pad  # leaves room for the padding
    regions, start = [], None  # start: the open region's first sample, None outside speech
    silence = cut = resume = 0  # current silence's start; last silence > 98 ms; where speech resumed after it
    for i, (is_loud, is_quiet) in enumerate(zip(loud, quiet)):
        sample = FRAME * i
        if is_loud and silence:  # the silence was too short: the region goes on
            silence = 0
            resume = sample if resume < cut else resume
        if is_loud and start is None:
            start = sample
            continue
        if start is not None and sample - start > max_speech:  # too long: cut at the last long silence, or here
            regions.append([start, cut or sample])
            start = resume if cut and resume >= cut else None
            silence = cut = resume = 0
        if is_quiet and start is not None:
            silence = silence or sample
            cut = silence if sample - silence > CUT_SILENCE else cut
            if sample - silence < min_silence:
                continue
            if silence - start > min_speech:
                regions.append([start, silence])
            start, silence, cut, resume = None, 0, 0, 0
    if start is not None and n_samples - start > min_speech:
        regions.append([start, n_samples])
    return regions


def _padded(regions: list[list[int]], n_samples: int, pad: float) -> list[tuple[int, int]]:
    """Widen each region by `pad` samples; across a gap shorter than two pads, meet in the middle."""
    for i, region in enumerate(regions):
        if i == 0:
            region[0] = int(max(0, region[0] - pad))
        if i + 1 == len(regions):
            region[1] = int(min(n_samples, region[1] + pad))
            continue
        following = regions[i + 1]
        gap = following[0] - region[1]
        if gap < 2 * pad:
            region[1] += int(gap // 2)
            following[0] = int(max(0, following[0] - gap // 2))
        else:
            region[1] = int(min(n_samples, region[1] + pad))
            following[0] = int(max(0, following[0] - pad))
    return [(start, end) for start, end in regions]


def regions_from_probabilities(
    probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions()
) -> list[tuple[int, int]]:
    """Speech regions [(start, end)] in samples from frame probabilities [F] of an N-sample audio."""
    pad = SAMPLE_RATE * options.speech_pad_ms / 1000
    return _padded(_raw_regions(probs, n_samples, options), n_samples, pad)


def speech_regions(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Speech regions [(start, end)] in samples of 16 kHz audio [N], sorted and disjoint."""
    return regions_from_probabilities(speech_probabilities(audio), len(audio), options)


class SpeechMap:
    """The speech regions cut out of a recording and put back to back, and the way back to its times.

    A time t (s) in the collected audio lies in the first region whose collected end is past t
    (the last region for times beyond the end), and moves by all the silence removed before it.
    """

    def __init__(self, regions: Sequence[tuple[int, int]]):
        self.regions = [(int(start), int(end)) for start, end in regions]
        starts = np.array([start for start, _ in self.regions], dtype=np.int64)  # [R]
        lengths = np.array([end - start for start, end in self.regions], dtype=np.int64)  # [R]
        ends = np.cumsum(lengths)  # [R] each region's end in the collected audio (samples)
        self._ends = ends.tolist()
        self._shift = ((starts - (ends - lengths)) / SAMPLE_RATE).tolist()  # [R] seconds removed before

    def collect(self, audio: np.ndarray) -> np.ndarray:
        """The speech the decoder sees: [N] -> [sum of region lengths]."""
        if not self.regions:
            return np.zeros(0, dtype=audio.dtype)
        return np.concatenate([audio[start:end] for start, end in self.regions])

    def restore(self, t: float, *, is_end: bool = False) -> float:
        """A time (s) in the collected audio -> the same moment in the original recording (s).

        At a seam between two regions, an end time (`is_end`) stays with the region before it.
        Not rounded (faster-whisper rounds to 0.01 s). With no regions, t is returned as is.
        """
        if not self.regions:
            return t
        sample = int(t * SAMPLE_RATE)
        index = bisect.bisect_right(self._ends, sample)
        if is_end and index > 0 and self._ends[index - 1] == sample:
            index = bisect.bisect_left(self._ends, sample)
        return self._shift[min(index, len(self._ends) - 1)] + t


def check_available() -> None:
    """Raise VadUnavailable (with what to install) unless onnxruntime and the Silero weights
    are both there: a run with voice activity detection checks this once, at start-up."""
    _session(1)
