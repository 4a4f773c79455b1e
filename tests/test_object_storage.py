"""Object storage end to end against a real S3-compatible server on localhost (moto's server
mode, started here): a manifest in the bucket lists audio in the bucket (and a Parquet dataset
there), results go to the bucket, a SIGKILL mid-run and `--resume` end with exactly one record
per input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("pyarrow")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from cli_runs import cli_environment  # noqa: E402
from dataset_fixtures import CORPUS, write_parquet  # noqa: E402

BUCKET = "speech"
CLIPS = sorted(p.name for p in CORPUS.glob("joe_*.flac"))[:8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(tmp_path):
    """A moto S3 server on localhost with credentials for it in the environment given to the CLI."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client, env
    finally:
        server.stop()


def _records(client, key: str) -> list[dict]:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def _part_records(client, prefix: str) -> int:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sum(len(_records(client, o["Key"])) for o in listed)


@pytest.mark.slow
def test_bucket_inputs_and_results_survive_a_kill_and_resume(s3, tmp_path):
    client, s3_env = s3
    for name in CLIPS:
        client.upload_file(str(CORPUS / name), BUCKET, f"audio/{name}")
    lines = [{"path": f"s3://{BUCKET}/audio/{n}"} for n in CLIPS[:-1]]
    lines.append({"audio_filepath": f"audio/{CLIPS[-1]}", "text": "relative to the manifest"})
    lines.append({"path": f"s3://{BUCKET}/audio/missing.flac"})
    client.put_object(Bucket=BUCKET, Key="lists/manifest.jsonl",
                      Body="".join(json.dumps(x) + "\n" for x in lines).encode())
    client.upload_file(str(CORPUS / CLIPS[-1]), BUCKET, f"lists/audio/{CLIPS[-1]}")  # beside the manifest
    write_parquet(tmp_path / "rows.parquet", ("joe_cat.flac", "espeak_apples.flac"))
    client.upload_file(str(tmp_path / "rows.parquet"), BUCKET, "data/rows.parquet")

    inputs = [f"s3://{BUCKET}/lists/manifest.jsonl", f"s3://{BUCKET}/data/rows.parquet"]
    out = f"s3://{BUCKET}/runs/one"
    expected = [f"s3://{BUCKET}/audio/{n}" for n in CLIPS[:-1]] + [f"s3://{BUCKET}/lists/audio/{CLIPS[-1]}",
                                                                   f"s3://{BUCKET}/audio/missing.flac"] + \
        [f"s3://{BUCKET}/data/rows.parquet:{i}" for i in range(2)]
    env = {**cli_environment(tmp_path / "cache"), **s3_env}
    command = [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *inputs, "--output-dir", out,
               "--staging-dir", str(tmp_path / "staging"), "--upload-every", "0", "--quiet", "--no-progress",
               "--batch-size", "2"]

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while _part_records(client, "runs/one/parts/") < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, 9)
    proc.wait(timeout=60)
    assert killed, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
    uploaded = _part_records(client, "runs/one/parts/")
    assert 3 <= uploaded < len(expected)

    # The staging folder may hold records that never reached the bucket: the bucket is the truth.
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 3, resumed.stderr[-3000:]  # finished, with the missing file's error record
    records = _records(client, "runs/one/results.jsonl")
    assert sorted(r["path"] for r in records) == sorted(expected)  # each input exactly once
    by_path = {r["path"]: r for r in records}
    assert "not found" in by_path[f"s3://{BUCKET}/audio/missing.flac"]["error"]
    assert all(by_path[p]["error"] is None and by_path[p]["text"].strip() for p in expected if "missing" not in p)
    assert not client.list_objects_v2(Bucket=BUCKET, Prefix="runs/one/parts/").get("KeyCount")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/one/")["Contents"]}
    assert "runs/one/summary.json" in listed
    assert sum(k.endswith(".json") and "summary" not in k for k in listed) == len(expected) - 1  # one per transcript

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr  # old results in the bucket are never overwritten


# --- several runs on one output URL (issue 25, H3), in process against the same server -------------

@pytest.fixture()
def bucket(s3, monkeypatch):
    """The moto server's client, with s3fs in this process pointed at the server."""
    import s3fs

    client, env = s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance would talk to an earlier server
    yield client
    s3fs.S3FileSystem.clear_instance_cache()


def _record(path: str, files: tuple[str, ...] = ()) -> dict:
    return {"path": path, "text": f"text of {path}", "error": None, "error_kind": None, "files": list(files)}


def _keys(client, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_a_second_run_on_one_url_is_refused_while_the_first_holds_the_lease(bucket, tmp_path):
    from whisper_nnx.engine.remote_output import BucketSink
    from whisper_nnx.engine.results import RunLocked

    url = f"s3://{BUCKET}/runs/two"
    first = BucketSink(url, tmp_path / "a", upload_every_s=0)
    second = BucketSink(url, tmp_path / "b", upload_every_s=0)
    assert first.run_id != second.run_id and len(first.run_id) >= 32  # uuids, not second+PID
    with first:
        first.write(_record("x.wav"))
        with pytest.raises(RunLocked, match="in use by another run"):
            second.__enter__()
        assert [r["path"] for r in _part_lines(bucket, "runs/two/parts/")] == ["x.wav"]  # nothing of B's
    assert "runs/two/lease.json" not in _keys(bucket, "runs/two/")  # released at the end
    with second:  # the next run goes, and resumes from the first's records
        second.write(_record("y.wav"))
    assert sorted(r["path"] for r in _records(bucket, "runs/two/results.jsonl")) == ["x.wav", "y.wav"]


def test_an_expired_lease_is_taken_over(bucket, tmp_path):
    from whisper_nnx.engine.remote_output import BucketSink

    url = f"s3://{BUCKET}/runs/stale"
    stalled = BucketSink(url, tmp_path / "a", upload_every_s=0, lease_s=1.0, renew=False)
    stalled.__enter__()  # never left, never renewed: a run that hangs
    time.sleep(1.2)
    with BucketSink(url, tmp_path / "b", upload_every_s=0) as taker:
        taker.write(_record("y.wav"))
    assert [r["path"] for r in _records(bucket, "runs/stale/results.jsonl")] == ["y.wav"]


def test_finishing_keeps_another_runs_records_and_parts(bucket, tmp_path, monkeypatch):
    from whisper_nnx.engine.remote_output import BucketSink
    from whisper_nnx.engine.results import record_line

    url = f"s3://{BUCKET}/runs/three"
    sink = BucketSink(url, tmp_path / "a", upload_every_s=0)
    read = BucketSink._read_bucket

    def late_part(self):  # another run's part lands after this run read the bucket to merge
        found = read(self)
        bucket.put_object(Bucket=BUCKET, Key="runs/three/parts/late-000001.jsonl",
                          Body=record_line(_record("late.wav")).encode())
        return found

    with sink:
        sink.write(_record("mine.wav"))
        bucket.put_object(Bucket=BUCKET, Key="runs/three/parts/other-000001.jsonl",
                          Body=record_line(_record("theirs.wav")).encode())
        monkeypatch.setattr(BucketSink, "_read_bucket", late_part)
    assert sorted(r["path"] for r in _records(bucket, "runs/three/results.jsonl")) == ["mine.wav", "theirs.wav"]
    assert _keys(bucket, "runs/three/parts/") == ["runs/three/parts/late-000001.jsonl"]  # not merged: kept


def test_the_bucket_gets_exactly_the_files_each_record_lists(bucket, tmp_path):
    from whisper_nnx.engine.remote_output import BucketSink

    staging = tmp_path / "a"
    (staging / "c" / "1").mkdir(parents=True)
    (staging / "c" / "1" / "audio.txt").write_text("one\n")
    (staging / "audio~2.txt").write_text("two\n")
    (staging / "stray.txt").write_text("no record lists it\n")
    with BucketSink(f"s3://{BUCKET}/runs/four", staging, formats=("txt",), upload_every_s=0) as sink:
        sink.write(_record("c/1/audio.flac", ("c/1/audio.txt",)))
        sink.write(_record("d/audio.flac", ("audio~2.txt",)))
    keys = _keys(bucket, "runs/four/")
    assert [k for k in keys if k.endswith(".txt")] == ["runs/four/audio~2.txt", "runs/four/c/1/audio.txt"]
    assert bucket.get_object(Bucket=BUCKET, Key="runs/four/c/1/audio.txt")["Body"].read() == b"one\n"


def _part_lines(client, prefix: str) -> list[dict]:
    return [r for key in _keys(client, prefix) for r in _records(client, key)]


def test_the_cli_refuses_a_leased_url_with_exit_2_before_any_work(bucket, tmp_path, capsys):
    from whisper_nnx.engine import cli
    from whisper_nnx.engine.remote_output import BucketSink

    url = f"s3://{BUCKET}/runs/five"
    with BucketSink(url, tmp_path / "a", upload_every_s=0):
        code = cli.main(["transcribe", str(CORPUS / CLIPS[0]), "--output-dir", url, "--staging-dir",
                         str(tmp_path / "b"), "--model", "no-such-model-is-loaded", "--quiet", "--no-progress"])
    assert code == 2 and "in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "b" / "results.jsonl").exists()  # nothing pulled, nothing written


# --- credentials missing or refused: found before any work (issue 25) ------------------------------

class _Unstarted:
    """A producer that records whether the run got as far as starting it (loading a model)."""

    started = False

    def start(self, options) -> dict:
        _Unstarted.started = True
        return {"model": "stand-in"}

    def records(self, entries, options):
        return iter(())


@pytest.mark.parametrize("case", ["no credentials", "no bucket", "refused"])
def test_an_output_url_without_credentials_or_permission_fails_before_any_work(s3, tmp_path, monkeypatch, capsys,
                                                                              case):
    import s3fs

    from whisper_nnx.engine import cli
    from whisper_nnx.engine.remote_output import BucketSink

    _, env = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if case == "no credentials":  # nothing botocore could find: no keys, files, profile or instance role
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            monkeypatch.setenv(key, str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    if case == "refused":  # what s3fs raises for AccessDenied (moto's server does not check permissions)
        def refused(self):
            raise PermissionError("Access Denied")

        monkeypatch.setattr(BucketSink, "_put_lease", refused)
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(cli, "_producer", lambda args: _Unstarted())
    _Unstarted.started = False
    url = f"s3://{'no-such-bucket' if case == 'no bucket' else BUCKET}/runs/creds"
    try:
        code = cli.main(["transcribe", str(CORPUS / CLIPS[0]), "--output-dir", url, "--staging-dir",
                         str(tmp_path / "staging"), "--quiet", "--no-progress", "--skip-non-speech", "off"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err
    assert code == 2 and not _Unstarted.started  # a setup error, before the model would load
    assert f"{url}: cannot use the output there" in err
    assert {"no credentials": "NoCredentialsError", "no bucket": "FileNotFoundError",
            "refused": "PermissionError"}[case] in err
    assert not (tmp_path / "staging" / "results.jsonl").exists()
