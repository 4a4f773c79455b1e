"""The bucket mirror of an `--output-dir` URL streams the bucket's records: pulling them and
finishing the run hold hashes of the lines and a few blocks, not the lines: objects are read a
block at a time without fsspec's read cache, and results.jsonl is put from disk as a multipart
upload a block at a time (against moto's S3 server, run as a process of its own so that only
this process's memory is traced)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

from whisper_nnx.engine.remote_output import BucketSink  # noqa: E402
from whisper_nnx.engine.results import RESULTS, record_line  # noqa: E402

BUCKET, COUNT = "speech", 20_000  # 38 MB of records
BLOCK = 512 << 10  # the mirror's read block here (4 MiB in a run): held a few times over at most
UPLOAD = 5 << 20  # its upload block here (S3's smallest part; 8 MiB in a run): held about 4 times
TEXT = "so my fellow Americans ask not what your country can do for you " * 28  # ~1.8 kB a record


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def bucket(monkeypatch):
    """A moto S3 server in a process of its own, s3fs in this process pointed at it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        s3fs.S3FileSystem.clear_instance_cache()
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=30)


def _line(i: int) -> str:
    return record_line({"path": f"c/{i:06d}.flac", "text": TEXT, "error": None, "error_kind": None,
                        "files": [f"c/{i:06d}.txt"]})


def _traced(call):
    """(what `call()` returned, the peak bytes this process allocated meanwhile)."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_pull_and_finish_hold_hashes_not_lines(bucket, tmp_path, monkeypatch):
    from whisper_nnx.engine import remote_output

    monkeypatch.setattr(remote_output, "READ_BLOCK", BLOCK, raising=False)
    monkeypatch.setattr(remote_output, "UPLOAD_BLOCK", UPLOAD, raising=False)
    body = "".join(_line(i) for i in range(COUNT)).encode()
    half = "".join(_line(i) for i in range(COUNT // 2, COUNT + 10)).encode()  # repeats, then 10 new
    bucket.put_object(Bucket=BUCKET, Key="runs/big/results.jsonl", Body=body)
    bucket.put_object(Bucket=BUCKET, Key="runs/big/parts/other-000001.jsonl", Body=half)
    size = len(body)
    sink = BucketSink(f"s3://{BUCKET}/runs/big", tmp_path / "staging", upload_every_s=3600, settle_s=0.0,
                      renew=False)
    sink.acquire()
    pulled, peak_pull = _traced(sink.pull)
    assert pulled == COUNT + 10 and len(sink._pulled) == COUNT + 10
    assert (tmp_path / "staging" / RESULTS).stat().st_size == size + 10 * len(_line(COUNT).encode())
    # the lines were 38 MB: what is held is hashes (about 100 bytes a line) and a few read blocks
    assert peak_pull < 100 * (COUNT + 10) + 8 * BLOCK, peak_pull

    sink.write({"path": "new.flac", "text": "new", "error": None, "error_kind": None, "files": []})
    _, peak_finish = _traced(sink.finish)
    sink.release()
    # the union streamed to disk, then put from there a block at a time (a multipart upload)
    assert peak_finish < 2 * 100 * COUNT + 8 * BLOCK + 5 * UPLOAD, (peak_finish, size)
    assert peak_finish < 0.7 * size, (peak_finish, size)  # before: about twice the size (read whole, put whole)
    got = bucket.get_object(Bucket=BUCKET, Key="runs/big/results.jsonl")["Body"].read().decode().split("\n")
    new = json.dumps({"path": "new.flac", "text": "new", "error": None, "error_kind": None, "files": []})
    # results.jsonl first, then the parts in name order (this run's name is a random uuid)
    assert got[:COUNT] == [_line(i)[:-1] for i in range(COUNT)] and got[-1] == ""
    assert sorted(got[COUNT:-1]) == sorted([_line(i)[:-1] for i in range(COUNT, COUNT + 10)] + [new])
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix="runs/big/parts/")
