"""The launch scripts: --dry-run output parsed back into argv, and the TPU preemption loop run
against a fake `gcloud` that records its calls."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def _dry(script: str, *args: str) -> list[list[str]]:
    # --dry-run right after the subcommand: anything after "--" goes to whisper-nnx itself.
    proc = subprocess.run(["bash", str(LAUNCH / script), args[0], "--dry-run", *args[1:]], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _remote(argv: list[str]) -> list[str]:
    """The remote command of a `gcloud ... ssh --command=CMD` or `ssh HOST CMD` call, as argv."""
    command = next((a.split("=", 1)[1] for a in argv if a.startswith("--command=")), None) or argv[-1]
    return shlex.split(command)


def test_tpu_run_quotes_paths_and_runs_on_every_worker():
    calls = _dry("tpu_vm.sh", "run", "--name", "pod-1", "--zone", "us-central2-b", "--inputs",
                 "/mnt/gcs/my corpus/list's.jsonl", "--output-dir", "/mnt/gcs/out dir", "--model", "base",
                 "--", "--beam-size", "5")
    assert len(calls) == 1
    gcloud = calls[0]
    assert gcloud[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in gcloud
    assert "--zone=us-central2-b" in gcloud
    remote = _remote(gcloud)
    assert remote == ["whisper-nnx/.venv/bin/whisper-nnx", "transcribe", "/mnt/gcs/my corpus/list's.jsonl",
                      "--model", "base", "--output-dir", "/mnt/gcs/out dir", "--mesh", "data=-1", "--distributed",
                      "--beam-size", "5"]


def test_tpu_create_and_install():
    create = _dry("tpu_vm.sh", "create", "--name", "p", "--zone", "z", "--type", "v5litepod-16", "--spot")
    assert create == [["gcloud", "compute", "tpus", "tpu-vm", "create", "p", "--accelerator-type=v5litepod-16",
                       "--version=v2-alpha-tpuv5-lite", "--spot", "--zone=z"]]
    install = _dry("tpu_vm.sh", "install", "--name", "p", "--zone", "z")
    assert [c[0] for c in install] == ["tar", "gcloud", "gcloud"]
    assert "--worker=all" in install[1] and "--worker=all" in install[2]
    remote = " ".join(_remote(install[2]))
    assert "-m venv whisper-nnx/.venv" in remote and "install -q -e ./whisper-nnx[tpu]" in remote


def test_gpu_hosts_start_one_process_each_with_a_shared_coordinator():
    calls = _dry("gpu_host.sh", "run", "--hosts", "gpu-a,gpu-b,gpu-c", "--port", "4321", "--inputs", "/nfs/a b.txt",
                 "--output-dir", "/nfs/out", "--mesh", "data=-1,model=2")
    calls.sort(key=lambda c: c[1])  # started in the background: printed in any order
    assert [c[:2] for c in calls] == [["ssh", "gpu-a"], ["ssh", "gpu-b"], ["ssh", "gpu-c"]]
    for i, call in enumerate(calls):
        remote = _remote(call)
        assert remote[2] == "/nfs/a b.txt"
        assert remote[remote.index("--coordinator") + 1] == "gpu-a:4321"
        assert remote[remote.index("--num-processes") + 1] == "3"
        assert remote[remote.index("--process-id") + 1] == str(i)


@pytest.mark.parametrize("script,args,message", [
    ("tpu_vm.sh", ["run", "--zone", "z"], "--name and --zone are required"),
    ("tpu_vm.sh", ["run", "--name", "n", "--zone", "z"], "run needs --inputs and --output-dir"),
    ("tpu_vm.sh", ["create", "--name", "n", "--zone", "z"], "create needs --type"),
    ("tpu_vm.sh", ["fly", "--name", "n", "--zone", "z"], "unknown command fly"),
    ("gpu_host.sh", ["run", "--bogus"], "unknown argument --bogus"),
])
def test_bad_arguments_fail_with_a_message(script, args, message):
    proc = subprocess.run(["bash", str(LAUNCH / script), args[0], "--dry-run", *args[1:]], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and message in proc.stderr


def test_watch_recreates_a_preempted_vm_and_resumes(tmp_path):
    """A fake gcloud: the VM is PREEMPTED at first, READY after it is recreated; the job succeeds."""
    log, state = tmp_path / "calls.log", tmp_path / "state"
    state.write_text("PREEMPTED")
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$*" in
  *" describe "*) cat {state} ;;
  *" create "*) echo READY > {state} ;;
esac
exit 0
""")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "watch", "--name", "p", "--zone", "z", "--type",
                           "v5litepod-8", "--inputs", "/m/list.txt", "--output-dir", "/m/out", "--interval", "0"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split()[3] for line in log.read_text().splitlines()]  # tpu-vm <verb>
    assert calls == ["describe", "delete", "create", "scp", "ssh", "describe", "ssh"]
    assert "--resume" in log.read_text().splitlines()[-1]
    assert "recreating" in proc.stderr and "job finished" in proc.stdout
