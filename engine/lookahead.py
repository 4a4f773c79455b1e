"""Inputs by position, from a list or from an iterator that yields them as they are listed.

The reading side submits inputs by position and looks ahead for long files (`reading.LongFiles`)
without waiting on a listing: `Lookahead` gives both, holding only the stretch of inputs between
the first not yet handed out and the furthest pulled.
"""

from __future__ import annotations

import collections.abc
import threading
from typing import Iterable, Iterator

AHEAD = 4096  # items an iterator is pulled ahead of the first not handed out


class Lookahead:
    """The items of `items` by position. A sequence is indexed as it is; an iterator is pulled
    on a thread of its own (its code runs there), at most `ahead` items past the first not yet
    taken, so `has(i, wait=False)` can say at once whether item i is there yet. Each item is
    handed out once (`take`) and let go of; an error the iterator raises is raised by `has`
    once the items before it are taken."""

    def __init__(self, items: Iterable, ahead: int = AHEAD):
        self._sequence = items if isinstance(items, collections.abc.Sequence) else None
        self._held: dict[int, object] = {}
        self._pulled = self._taken = 0  # items pulled from the iterator; the first not taken
        self._ended = self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._ahead = ahead
        if self._sequence is None:
            threading.Thread(target=self._pull, args=(iter(items),), daemon=True, name="whisper-nnx-inputs").start()

    def _pull(self, source: Iterator) -> None:
        try:
            for item in source:
                with self._changed:
                    while self._pulled - self._taken >= self._ahead and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    self._held[self._pulled] = item
                    self._pulled += 1
                    self._changed.notify_all()
        except BaseException as err:  # noqa: BLE001 - raised to the reader, in order
            self._error = err
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def has(self, index: int, wait: bool = True) -> bool:
        """Whether there is an item at `index` (taken ones count); `wait` False: whether it is
        there now (an iterator still listing may give it later)."""
        if self._sequence is not None:
            return index < len(self._sequence)
        with self._changed:
            while wait and self._pulled <= index and not self._ended:
                self._changed.wait()
            if self._pulled <= index and self._ended and self._error is not None:
                raise self._error
            return index < self._pulled

    def held(self, index: int):
        """The item at `index` without taking it; None when it is not there (yet) or was taken."""
        if self._sequence is not None:
            return self._sequence[index] if index < len(self._sequence) else None
        with self._changed:
            return self._held.get(index)

    def take(self, index: int):
        """The item at `index`, handed out (IndexError: none there, or taken already)."""
        if not self.has(index):
            raise IndexError(index)
        if self._sequence is not None:
            return self._sequence[index]
        with self._changed:
            if index not in self._held:
                raise IndexError(index)
            item = self._held.pop(index)
            while self._taken not in self._held and self._taken < self._pulled:
                self._taken += 1  # the first not taken (items started early are taken out of order)
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """No more items are wanted: the iterator's thread stops pulling."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
