"""One input entry: the name its record carries, its stable key, and how its audio is opened
(engine/inputs.py makes entries from the command line; engine/datasets.py from dataset rows)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import BinaryIO, Callable, Optional, Union

from . import storage
from .audio import AudioInput, AudioRef

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm",
                  ".mp4", ".mkv", ".mov", ".avi", ".aiff", ".aif", ".amr", ".3gp"}


def entry_key(name: str) -> str:
    """The identity of the audio behind an entry or a record's `path`: its absolute path (a URL
    or a dataset row's name as it is)."""
    return name if storage.is_url(name) else os.path.abspath(name)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One input entry: `name` as given (a record's `path`), or an entry naming no file (`error`).

    `opener` gives the entry's bytes where they are not the file `name` (a dataset row, a tar
    member, the file of a manifest span); `offset_s`/`duration_s` cut a span of what it decodes to."""

    name: str
    error: Optional[str] = None  # why this entry names no audio (a bad manifest line or row)
    opener: Optional[Callable[[], Union[str, BinaryIO]]] = dataclasses.field(default=None, compare=False)
    offset_s: float = 0.0
    duration_s: Optional[float] = None
    text: Optional[str] = None  # reference transcript, when the source has one

    @property
    def key(self) -> str:
        return entry_key(self.name)

    def open(self) -> BinaryIO:
        """The entry's bytes (a missing or unreadable file raises OSError here; the decoder
        reports it as the entry's error when given the name instead)."""
        source = self.opener() if self.opener is not None else self.name
        return storage.open_binary(source) if isinstance(source, str) else source

    def source(self) -> AudioInput:
        """What the engine decodes: the local path itself, or a ref that opens the bytes."""
        if self.opener is None and not storage.is_url(self.name) and not self.offset_s and self.duration_s is None:
            return self.name
        opener = self.opener or functools.partial(open_url_or_path, self.name)
        return AudioRef(self.name, opener, self.offset_s, self.duration_s)


def open_url_or_path(name: str) -> Union[str, BinaryIO]:
    return storage.open_binary(name) if storage.is_url(name) else name
