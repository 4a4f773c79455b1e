"""One input entry: the name its record carries, its stable key, and how its audio is opened
(engine/inputs.py makes entries from the command line; engine/datasets.py from dataset rows;
engine/audio.py decodes them, calling `opener` on the decoding thread)."""

from __future__ import annotations

import dataclasses
import os
from typing import BinaryIO, Callable, Mapping, Optional, Union

import numpy as np

from . import storage

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm",
                  ".mp4", ".mkv", ".mov", ".avi", ".aiff", ".aif", ".amr", ".3gp"}


def entry_key(name: str) -> str:
    """The identity of the audio behind an entry or a record's `path`: its absolute path (a URL
    or a dataset row's name as it is; a URL with its credentials REDACTED, as its record names it:
    `storage.redact`, so presigned URLs of one object signed twice are one entry)."""
    return storage.redact(name) if storage.is_url(name) else os.path.abspath(name)


def record_key(record: Mapping) -> str:
    """The identity of the entry a record belongs to: its dataset `row` when it has one (an
    --id-column value names the record, and several rows may share it), else its `path`."""
    return entry_key(record.get("row") or record["path"])


@dataclasses.dataclass(frozen=True)
class Entry:
    """One input entry: `name` as given (a record's `path`), or an entry naming no file (`error`).

    `opener` gives the entry's bytes where they are not the file or URL `name` (a dataset row, a
    tar member, the file of a manifest span): a path or a binary file object, asked for on the
    decoding thread when the entry's turn comes (a module function of plain values, so that the
    entry pickles: Ray ships entries to its actors). `offset_s`/`duration_s` cut the span
    [offset_s, offset_s + duration_s) of what it decodes to (a NeMo manifest's `offset` and
    `duration`)."""

    name: str
    error: Optional[str] = None  # why this entry names no audio (a bad manifest line or row)
    opener: Optional[Callable[[], Union[str, os.PathLike, BinaryIO]]] = dataclasses.field(default=None, compare=False)
    offset_s: float = 0.0
    duration_s: Optional[float] = None
    text: Optional[str] = None  # reference transcript, when the source has one
    # the dataset row (`FILE:ROW`) behind an entry named by its --id-column value: the entry's
    # identity (ids are names: rows may share one); its records carry it as `row`
    row: Optional[str] = None

    @property
    def key(self) -> str:
        return entry_key(self.row or self.name)

    def for_producer(self) -> "Entry":
        """The entry as a record producer gets it: named by its identity, so that each record
        comes back to its own entry (`BulkRun` names the record by `name` again)."""
        return self if self.row is None else dataclasses.replace(self, name=self.row)

    def source(self) -> Union[str, "Entry"]:
        """What the engine decodes (audio.iter_decoded): a plain local file as its path, anything
        else (an opener, a URL, a span, an error) as the entry itself."""
        if self.error is None and self.opener is None and not storage.is_url(self.name) \
                and not self.offset_s and self.duration_s is None:
            return self.name
        return self


class NamedSamples(np.ndarray):
    """16 kHz samples with the name their record carries as its `path` (the Python API's
    `(name, samples)` inputs): an array like any other to the engine, which names its record and
    errors by `name` (audio.input_name) instead of `<array>`."""

    name: str

    def __new__(cls, name: str, samples: np.ndarray) -> "NamedSamples":
        if not isinstance(name, str):
            raise TypeError(f"an array input's name must be a str, got {type(name).__name__}")
        named = np.asarray(samples).view(cls)
        named.name = name
        return named

    def __array_finalize__(self, source) -> None:
        """Views and slices of named samples keep the name."""
        self.name = getattr(source, "name", "<array>")


def open_url_or_path(name: str) -> Union[str, BinaryIO]:
    """A URL opened through fsspec; a local path as it is (the decoder opens it itself)."""
    return storage.open_binary(name) if storage.is_url(name) else name
