"""Decoded audio frames as float32 samples: the sample formats PyAV's decoders give most often
(16- and 32-bit integers, float and double, packed or planar) converted here, bit for bit as
swresample converts them (an integer sample rounded to float32, times a power of two), and
channels mixed to mono.

    frame (PyAV AudioFrame) -> float_planes -> float32 [C, n] -> mono -> [n]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import av

# Sample formats converted to float32 here, as swresample converts them (the same products,
# bit for bit: an integer sample rounded to float32, times a power of two): (dtype, scale or None)
_FLOAT_SCALE = {"s16": (np.int16, 1 / (1 << 15)), "s32": (np.int32, 1 / (1 << 31)),
                "flt": (np.float32, None), "dbl": (np.float64, None)}
PIECE_SAMPLES = 1 << 16  # decoded frames are handed on in pieces of about this many samples


def float_planes(frame: av.AudioFrame) -> Optional[np.ndarray]:
    """The frame's samples as a new float32 [C, n] for the common sample formats (None for
    others: swresample converts those)."""
    fmt = frame.format
    kind = _FLOAT_SCALE.get(fmt.name.rstrip("p"))
    if kind is None:
        return None
    dtype, scale = kind
    channels, n = len(frame.layout.channels), frame.samples
    if fmt.is_planar:  # one plane per channel (a plane may hold padding past its samples)
        x = np.stack([np.frombuffer(plane, dtype, count=n) for plane in frame.planes[:channels]])
    else:  # one plane, channels interleaved
        x = np.frombuffer(frame.planes[0], dtype, count=n * channels).reshape(n, channels).T
    return x.astype(np.float32) * np.float32(scale) if scale is not None else x.astype(np.float32)


def mono(planes: np.ndarray) -> np.ndarray:
    """float32 [C, n] -> [n]: the one channel, or the channels' mean."""
    return planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
