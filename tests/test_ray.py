"""Bulk transcription on Ray Data against a real local Ray cluster (a head and a worker node
started here): records equal to the single-process CLI's; a worker actor killed mid-run loses
and duplicates no row; a SIGKILLed driver resumes to exactly one record per input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from cli_runs import cli_environment, complete_records, kill_after_records  # noqa: E402
from dataset_fixtures import CORPUS, write_parquet  # noqa: E402

CLIPS = sorted(str(p) for p in CORPUS.glob("joe_*.flac"))[:8]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Ray's raylets start their workers at niceness 15: beside the suite's other pytest-xdist worker
    # (a normal-priority process compiling and decoding) the actors got almost no CPU, and this
    # file took 5 times as long as alone (1009 s against 209 s on 2 cores)
    with pytest.MonkeyPatch.context() as patch:  # read by the raylets as they start
        patch.setenv("RAY_worker_niceness", "0")
        local = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
        local.add_node(num_cpus=1)
        local.wait_for_nodes()
    try:
        yield local.address
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cli_environment(tmp_path_factory.mktemp("compile-cache"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *args, "--quiet", "--no-progress"]


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ray_records_equal_the_single_process_clis(cluster, env, tmp_path):
    bad = tmp_path / "not audio.wav"
    bad.write_text("not audio")
    rows = write_parquet(tmp_path / "rows.parquet", ("joe_cat.flac", "espeak_apples.flac"))
    inputs = [*CLIPS[:5], str(bad), str(rows)]
    single = subprocess.run(_cli(*inputs, "--output-dir", str(tmp_path / "single")), env=env,
                            capture_output=True, text=True, timeout=600)
    on_ray = subprocess.run(_cli(*inputs, "--output-dir", str(tmp_path / "ray"), "--ray", cluster, "--ray-actors", "2",
                                 "--ray-rows", "2"), env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == on_ray.returncode == 3, (single.stderr[-2000:], on_ray.stderr[-2000:])
    ours = {r["path"]: r for r in _records(tmp_path / "single")}
    theirs = {r["path"]: r for r in _records(tmp_path / "ray")}
    assert len(ours) == len(CLIPS[:5]) + 1 + 2 and sorted(ours) == sorted(theirs)
    assert ours == theirs  # every field of every record
    assert theirs[str(bad)]["error_kind"] == "input"


def _actor_processes() -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "RayTranscriber" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow
def test_a_killed_worker_actor_loses_no_row(cluster, env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli(*CLIPS, "--output-dir", str(out), "--ray", cluster, "--ray-actors", "2",
                                 "--ray-rows", "1"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(complete_records(out / "results.jsonl")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    actors = _actor_processes()
    assert proc.poll() is None and actors, "no actor to kill while the run was going"
    actors[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted(CLIPS)  # each row once
    assert all(r["error"] is None and r["text"].strip() for r in records)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(cluster, env, tmp_path):
    out = tmp_path / "out"
    command = _cli(*CLIPS, "--output-dir", str(out), "--ray", cluster, "--ray-actors", "2", "--ray-rows", "1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert kill_after_records(proc, out / "results.jsonl", 2, timeout=300)
    done = {r["path"] for r in complete_records(out / "results.jsonl")}
    assert 2 <= len(done) < len(CLIPS)
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted(CLIPS)  # the rest done, nothing twice
    assert json.loads((out / "summary.json").read_text())["skipped_already_done"] == len(done)


@pytest.mark.slow
def test_the_actor_takes_bytes_array_and_path_columns(tmp_path):
    """RayTranscriber called as Ray Data calls it, on the column kinds a user's dataset has."""
    import numpy as np

    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.ray_job import RECORD_COLUMNS, RayTranscriber

    actor = RayTranscriber("tiny.en", options={"language": "en", "batch_size": 4},
                           compile_cache=str(tmp_path / "cache"))
    clips = CLIPS[:2]
    by_path = actor({"path": np.array(clips, dtype=object)})
    assert sorted(by_path) == sorted(RECORD_COLUMNS) and by_path["path"] == clips
    texts = by_path["text"]
    assert all(t.strip() for t in texts) and by_path["error"] == [None, None]
    by_bytes = actor({"bytes": np.array([open(c, "rb").read() for c in clips], dtype=object),
                      "path": np.array(clips, dtype=object)})
    assert by_bytes["text"] == texts and by_bytes["path"] == clips
    by_array = actor({"array": np.array([load_audio(c) for c in clips], dtype=object)})
    assert by_array["text"] == texts and by_array["path"] == ["<array>", "<array>"]
    assert json.loads(by_array["record"][0])["text"] == texts[0]
    assert "tokens" not in json.loads(by_array["record"][0])  # kept off every written record
    bad = actor({"bytes": np.array([b"not audio"], dtype=object), "path": np.array(["x.wav"], dtype=object)})
    assert bad["error_kind"] == ["input"] and "x.wav" in bad["error"][0]
    with pytest.raises(ValueError, match="entry, bytes, array or path"):
        actor({"audio": np.array([b""], dtype=object)})


# --- issue 25: a row that kills its actor, credentials, relative paths ---------------------------------------------

POISON_SCRIPT = """
import functools, json, os, sys
from whisper_nnx.engine.entry import Entry
from whisper_nnx.engine.ray_job import connect, transcribe_on_ray
connect(sys.argv[1])
good, relative = sys.argv[2], sys.argv[3]
entries = [Entry(good), Entry("poison.wav", opener=functools.partial(os._exit, 1)), Entry(relative)]
records = list(transcribe_on_ray(entries, actors=1, rows_per_call=3,
                                 actor_args={"model": "tiny.en", "options": {"language": "en", "batch_size": 4}}))
print("RECORDS " + json.dumps(records))
"""


@pytest.mark.slow
def test_a_row_that_kills_its_actor_ends_as_its_run_error_record(cluster, env, tmp_path):
    """os._exit in the row's opener kills the actor each time: the row gets a run error after a bounded number of
    deaths, its block-mates are transcribed; a relative path resolves against the driver's directory."""
    relative = CLIPS[1].rsplit("/", 1)[1]
    proc = subprocess.run([sys.executable, "-c", POISON_SCRIPT, cluster, CLIPS[0], relative], env=env,
                          cwd=CLIPS[1].rsplit("/", 1)[0], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RECORDS "))
    found = {r["path"]: r for r in json.loads(line[len("RECORDS "):])}
    assert sorted(found) == sorted([CLIPS[0], "poison.wav", relative])
    assert found["poison.wav"]["error_kind"] == "run" and "actor" in found["poison.wav"]["error"]
    for name in (CLIPS[0], relative):
        assert found[name]["error"] is None and found[name]["text"].strip(), found[name]


def test_the_runtime_env_holds_no_credentials():
    from whisper_nnx.engine.ray_job import runtime_env

    environ = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-key", "AWS_SESSION_TOKEN": "tok",
               "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "HF_TOKEN": "hf_x", "AWS_ENDPOINT_URL": "http://s3:9000",
               "AWS_DEFAULT_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1"}
    env = runtime_env(environ)
    assert env == {"env_vars": {"AWS_ENDPOINT_URL": "http://s3:9000", "AWS_DEFAULT_REGION": "eu-west-1",
                                "HF_HUB_OFFLINE": "1"}}
    text = json.dumps(env)
    assert not any(secret in text for secret in ("AKIAEXAMPLE", "secret-key", "tok", "hf_x", "/k.json"))
    assert runtime_env({"AWS_SECRET_ACCESS_KEY": "x"}) is None


def test_entries_sent_to_actors_carry_absolute_paths(tmp_path):
    import functools
    import os

    from whisper_nnx.engine.entry import Entry
    from whisper_nnx.engine.ray_job import actor_entry

    (tmp_path / "a.flac").write_bytes(b"x")
    (tmp_path / "rows.parquet").write_bytes(b"x")
    plain = actor_entry(Entry("a.flac"), str(tmp_path))
    assert plain.name == "a.flac" and plain.opener() == str(tmp_path / "a.flac")
    assert plain.source() is plain  # decoded through its opener, not the relative name
    row = actor_entry(Entry("rows.parquet:3", opener=functools.partial(os.path.join, "rows.parquet", "x")),
                      str(tmp_path))
    assert row.name == "rows.parquet:3" and row.opener() == str(tmp_path / "rows.parquet" / "x")
    for unchanged in (Entry("s3://b/a.flac"), Entry(str(tmp_path / "a.flac")), Entry("bad", error="no")):
        assert actor_entry(unchanged, str(tmp_path)) == unchanged and actor_entry(unchanged).opener is None


def test_connect_passes_no_credentials_to_ray_init(monkeypatch):
    from whisper_nnx.engine import ray_job

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-key",
                        "AWS_SESSION_TOKEN": "tok", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    ray_job.connect("")
    env = seen["runtime_env"]["env_vars"]
    secrets = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert env["HF_HUB_OFFLINE"] == "1" and not secrets & set(env)
