"""--dtype auto on a CPU follows what `whisper-nnx calibrate` measured on this machine: the choice
rule, the file keyed by machine, and the command end to end (timings of both dtypes, the choice
they imply, and the Transcriber taking it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from whisper_nnx.engine import calibrate
from whisper_nnx.engine.transcribe import resolve_dtype


class _Device:
    platform = "cpu"


def test_bfloat16_is_chosen_only_when_clearly_faster():
    assert calibrate.choose({"float32": 1.0, "bfloat16": 0.9}) == "bfloat16"  # at the bound
    assert calibrate.choose({"float32": 1.0, "bfloat16": 0.5}) == "bfloat16"
    assert calibrate.choose({"float32": 1.0, "bfloat16": 0.95}) == "float32"  # within the noise: the exact one
    assert calibrate.choose({"float32": 1.0, "bfloat16": 1.6}) == "float32"


def test_auto_takes_the_choice_measured_for_this_machine_and_model(tmp_path, monkeypatch):
    path = tmp_path / "cpu-precision.json"
    monkeypatch.setenv(calibrate.CHOICES_ENV, str(path))
    assert resolve_dtype("auto", _Device(), "tiny.en") == "float32"  # never calibrated
    entry = {"dtype": "bfloat16", "seconds": {"float32": 1.0, "bfloat16": 0.6}}
    other_machine = "Some Other CPU | avx2 fma | 64 cores | jax 0.10.2"
    path.write_text(json.dumps({calibrate.machine_key(): {"tiny.en": entry},
                                other_machine: {"base": entry}}))
    assert resolve_dtype("auto", _Device(), "tiny.en") == "bfloat16"
    assert resolve_dtype("auto", _Device(), "base") == "float32"  # measured on another machine only
    assert resolve_dtype("auto", _Device()) == "float32"  # no model named
    assert resolve_dtype("float32", _Device(), "tiny.en") == "float32"  # a named dtype is kept
    monkeypatch.setenv(calibrate.CHOICES_ENV, "off")
    assert resolve_dtype("auto", _Device(), "tiny.en") == "float32"
    path.write_text("{not json")
    monkeypatch.setenv(calibrate.CHOICES_ENV, str(path))
    assert resolve_dtype("auto", _Device(), "tiny.en") == "float32"  # a damaged file: as never calibrated


def test_machine_key_names_the_cpu_flags_cores_and_jax():
    import jax

    key = calibrate.machine_key()
    model, flags, cores, version = key.split(" | ")
    assert model and cores.endswith(" cores") and int(cores.split()[0]) >= 1
    assert version == f"jax {jax.__version__}"
    assert set(flags.split()) <= set(calibrate.VECTOR_FLAGS)


@pytest.mark.slow
def test_calibrate_times_both_dtypes_and_auto_follows(tmp_path):
    """The command on this machine (a small window: 1 row, 4 tokens): both dtypes timed, the
    stored choice is the one its own timings imply, and a Transcriber with dtype auto runs in it."""
    path = tmp_path / "choices.json"
    env = {**__import__("os").environ, calibrate.CHOICES_ENV: str(path)}
    done = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "calibrate", "--model", "tiny.en",
                           "--batch-size", "1", "--steps", "4", "--repeats", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    entry = json.loads(path.read_text())[calibrate.machine_key()]["tiny.en"]
    assert set(entry["seconds"]) == {"float32", "bfloat16"} and min(entry["seconds"].values()) > 0
    assert entry["dtype"] == calibrate.choose(entry["seconds"])
    assert (entry["batch"], entry["steps"], entry["repeats"]) == (1, 4, 1)
    assert f"--dtype auto on this CPU: {entry['dtype']} for tiny.en" in done.stdout
    probe = subprocess.run([sys.executable, "-c", "from whisper_nnx.engine import Transcriber; "
                            "print(Transcriber('tiny.en').dtype)"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == entry["dtype"]


def test_calibrate_refuses_what_it_cannot_time(tmp_path, monkeypatch, capsys):
    from whisper_nnx.engine.cli import main

    monkeypatch.setenv(calibrate.CHOICES_ENV, str(tmp_path / "c.json"))
    assert main(["calibrate", "--model", "/some/checkpoint"]) == 2
    assert "calibrate --model takes a model name" in capsys.readouterr().err
    monkeypatch.setenv(calibrate.CHOICES_ENV, "off")
    with pytest.raises(ValueError, match="is off"):
        calibrate.calibrate("tiny.en", path=None, report=lambda line: None, batch=1, steps=1, repeats=0)
