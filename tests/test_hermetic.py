"""The suite tests the weights it means to: offline, from the packages, never the hub's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_the_suite_runs_offline_with_an_empty_hub_cache():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not any(os.scandir(os.environ["HF_HUB_CACHE"]))


@pytest.mark.slow  # a fresh interpreter
def test_short_names_resolve_to_the_offline_packages():
    from whisper_nnx.engine.checkpoints.hub import offline_package_checkpoint, resolve_model

    assert resolve_model("tiny.en") == offline_package_checkpoint("tiny.en")
    # A subprocess (as the CLI tests run) inherits the same: it never asks the hub.
    code = ("import huggingface_hub.constants as c; from whisper_nnx.engine.checkpoints.hub import resolve_model;"
            "print(c.HF_HUB_OFFLINE, resolve_model('tiny.en'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    offline, path = out.stdout.split()
    assert offline == "True" and path == str(offline_package_checkpoint("tiny.en"))
