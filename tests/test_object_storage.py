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
