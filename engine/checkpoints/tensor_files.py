"""Readers for the tensor containers whisper-nnx loads, none of which can execute code.

- safetensors: an 8-byte little-endian header size, a JSON header, then raw arrays. Read here
  with a memory map so a process touches only the bytes of the slices it places on its devices,
  and written atomically (temp file + rename). bfloat16 is supported through `ml_dtypes`.
- CTranslate2 `model.bin`: a small binary header, then named arrays with their shapes and
  dtypes, then aliases (Whisper's output projection is an alias of the token embedding).

Malformed input raises `CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, malformed, or the wrong model."""


_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _file_bytes(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    return np.memmap(path, dtype=np.uint8, mode="r")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Name -> read-only array view of a .safetensors file (memory-mapped, nothing copied)."""
    path = Path(path)
    data = _file_bytes(path)
    if data.size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({data.size} bytes)")
    header_size = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
    if 8 + header_size > data.size:
        raise CheckpointError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(bytes(data[8:8 + header_size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    body = data[8 + header_size:]
    arrays = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            start, end = (int(o) for o in info["data_offsets"])
            shape = tuple(info["shape"])
            if not all(isinstance(n, int) and n >= 0 for n in shape) or not 0 <= start <= end:
                raise ValueError("negative or non-integer shape or offsets")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path}: bad header entry for {name!r} ({err})") from err
        if end > body.size:
            raise CheckpointError(f"{path}: truncated (tensor {name!r} ends past the end of file)")
        if end - start != dtype.itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}")
        arrays[name] = body[start:end].view(dtype).reshape(shape)
    return arrays


def write_safetensors(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write `arrays` as safetensors atomically (a reader never sees a partial file)."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    contiguous = {}
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        if array.dtype not in _ST_NAMES:
            raise ValueError(f"cannot store dtype {array.dtype} of {name!r} in safetensors")
        header[name] = {"dtype": _ST_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        contiguous[name] = array
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name in sorted(contiguous):
                f.write(contiguous[name].tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# CTranslate2 type ids (its DataType enum order).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16,
               5: ml_dtypes.bfloat16}


class _Cursor:
    """Sequential little-endian reads over a byte buffer, failing clearly at its end."""

    def __init__(self, data: np.ndarray, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > self.data.size:
            raise CheckpointError(f"{self.path}: truncated CTranslate2 model (ends inside the data)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)).tobytes())[0]

    def string(self) -> str:
        raw = self.take(self.uint("H")).tobytes()
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def read_ctranslate2(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, name -> array view) of a CTranslate2 `model.bin`, aliases resolved.

    Scalars (e.g. `decoder/num_heads`) come back as 0-d arrays. Binary versions 4 to 6.
    """
    path = Path(path)
    cursor = _Cursor(_file_bytes(path), path)
    version = cursor.uint("I")
    if not 4 <= version <= 6:
        raise CheckpointError(f"{path}: not a CTranslate2 model of a supported version "
                              f"(header says {version}; 4 to 6 are read)")
    spec = cursor.string()
    cursor.uint("I")  # spec revision
    arrays: dict[str, np.ndarray] = {}
    for _ in range(cursor.uint("I")):
        name = cursor.string()
        rank = cursor.uint("B")
        shape = tuple(cursor.uint("I") for _ in range(rank))
        type_id = cursor.uint("B")
        if type_id not in _CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {name!r} has unsupported type id {type_id}")
        dtype = np.dtype(_CT2_DTYPES[type_id])
        nbytes = cursor.uint("I")
        if nbytes != dtype.itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{path}: variable {name!r} has {nbytes} bytes for shape {shape}")
        arrays[name] = cursor.take(nbytes).view(dtype).reshape(shape)
    for _ in range(cursor.uint("I")):
        alias, target = cursor.string(), cursor.string()
        if target not in arrays:
            raise CheckpointError(f"{path}: alias {alias!r} points at missing {target!r}")
        arrays[alias] = arrays[target]
    return spec, arrays
