"""Stored outputs of the reference implementation (openai-whisper), keyed by all they depend on.

The corpus parity tests compare our tokens with the reference's on 32 clips; the reference's
side (its encoder, then one clip at a time for beam search) is about 40% of that file's time on
a 2-core CPU and the same on every run. `stored_or_live` returns the stored results when the
key still matches (the reference's and torch's versions, the checkpoint's bytes, the clips'
samples, the settings) and otherwise runs the reference, so a change of any input can only
make the tests slower, never compare against stale numbers. test_corpus_parity's
`test_stored_reference_results_are_what_the_reference_decodes` decodes the first batch live
and checks it against the stored results.

    WHISPER_NNX_LIVE_REFERENCE=1    never use stored results (run the reference every time)
    WHISPER_NNX_WRITE_REFERENCE=1   store what a live run computed (commit tests/data/reference/)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from whisper_nnx.engine.checkpoints.packaged import file_digest

STORE = Path(__file__).parent / "data" / "reference"


def fingerprint(parts: Iterable) -> str:
    """sha256 over `parts`: numpy arrays by dtype, shape and bytes, paths by the sha256 of every
    file under them (names included; `file_digest`: once per process per unchanged file),
    anything else by its JSON."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                digest.update(str(file.relative_to(part) if part.is_dir() else file.name).encode())
                digest.update(file_digest(file).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """The reference's and torch's versions: a stored result is only valid for these."""
    import torch
    import whisper

    return {"openai-whisper": whisper.__version__, "torch": torch.__version__}


def stored_or_live(name: str, key_parts: list, compute: Callable[[], list[dict]]) -> tuple[list[dict], bool]:
    """(results, stored): STORE/name.json's results when its key is fingerprint(versions(),
    *key_parts) and no live run is asked for, else compute() (JSON-able dicts), written back
    when WHISPER_NNX_WRITE_REFERENCE is set."""
    key = fingerprint([versions(), *key_parts])
    if not os.environ.get("WHISPER_NNX_LIVE_REFERENCE"):
        results = _stored_under(name, key)
        if results is not None:
            return results, True
    results = compute()
    if os.environ.get("WHISPER_NNX_WRITE_REFERENCE"):
        STORE.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "versions": versions(), "results": results}
        (STORE / f"{name}.json").write_text(json.dumps(record) + "\n")
    return results, False


def stored(name: str, key_parts: list) -> list[dict] | None:
    """STORE/name.json's results if it exists and its key is fingerprint(versions(), *key_parts)."""
    return _stored_under(name, fingerprint([versions(), *key_parts]))


def _stored_under(name: str, key: str) -> list[dict] | None:
    path = STORE / f"{name}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["results"] if saved["key"] == key else None
