"""The launch scripts: --dry-run output parsed back into argv, and the TPU preemption loop run
against a fake `gcloud` that records its calls."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # bash subprocesses (the launch scripts with fake ssh/gcloud)

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


# --- Real runs (DRY_RUN=0) against fake `gcloud` / `ssh` / `python` first on PATH -------------------------------

def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _launch(script: str, *args: str, fakes: Path, tmp: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run a launch script for real with `fakes` first on PATH and TMPDIR=`tmp` (so its temporary files can be
    checked); no real gcloud, ssh or host is reached."""
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "TMPDIR": str(tmp), "DRY_RUN": "0"}
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# gpu_host.sh: `ssh HOST CMD` answers with the status in status/HOST ("TERM": killed by SIGTERM); gpu-a is slow,
# so a host that fails early must not end the wait for the others.
FAKE_SSH = """d={d}
echo "start $1" >> "$d/ssh.log"
[[ $1 != gpu-a ]] || sleep 0.5
echo "end $1" >> "$d/ssh.log"
status=$(cat "$d/status/$1")
[[ $status != TERM ]] || kill -TERM $$
exit "$status"
"""


def _gpu_hosts(tmp_path: Path, statuses: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    for host, status in statuses.items():
        (tmp_path / "status").mkdir(exist_ok=True)
        (tmp_path / "status" / host).write_text(status)
    _executable(tmp_path / "bin" / "ssh", FAKE_SSH.format(d=tmp_path))
    return _launch("gpu_host.sh", "run", *args, "--inputs", "/nfs/list.txt", "--output-dir", "/nfs/out",
                   fakes=tmp_path / "bin", tmp=tmp_path / "tmp")


@pytest.mark.parametrize("statuses,expected", [
    (("0", "0", "0"), 0),
    (("0", "3", "0"), 3),      # finished everywhere, some inputs have error records
    (("3", "3", "3"), 3),
    (("0", "1", "3"), 1),      # a host failed: the run failed (rerun with --resume)
    (("0", "0", "255"), 1),    # ssh itself failed
    (("0", "TERM", "0"), 1),   # killed by a signal
    (("1", "2", "0"), 2),      # a host reported a usage/configuration error: retrying won't help
])
def test_gpu_hosts_run_exits_with_the_combined_status_of_every_host(tmp_path, statuses, expected):
    hosts = ["gpu-a", "gpu-b", "gpu-c"]
    proc = _gpu_hosts(tmp_path, dict(zip(hosts, statuses)), "--hosts", ",".join(hosts))
    assert proc.returncode == expected, proc.stderr
    log = (tmp_path / "ssh.log").read_text().splitlines()
    assert sorted(log) == sorted([f"start {h}" for h in hosts] + [f"end {h}" for h in hosts])  # all waited for
    for i, (host, status) in enumerate(zip(hosts, statuses)):
        reported = f"host {host} (process {i})"
        if status == "0":
            assert reported not in proc.stderr
        elif status == "3":
            assert f"{reported} finished; some inputs have error records" in proc.stderr
        else:
            shown = "143" if status == "TERM" else status
            assert f"{reported} failed with exit status {shown}" in proc.stderr
    if expected == 3:
        assert "see /nfs/out/results.jsonl" in proc.stderr


@pytest.mark.parametrize("status", [0, 1, 3, 255])
def test_gpu_single_host_run_propagates_the_exit_status(tmp_path, status):
    proc = _gpu_hosts(tmp_path, {"gpu-x": str(status)}, "--host", "gpu-x")
    assert proc.returncode == status, proc.stderr
    assert (tmp_path / "ssh.log").read_text().splitlines() == ["start gpu-x", "end gpu-x"]
    assert ("failed with exit status" in proc.stderr) == (status not in (0, 3))


# tpu_vm.sh: a fake gcloud driven by files in its directory:
#   state            what `describe` prints (READY, PREEMPTED, ...); `create` writes READY
#   describe.err/rc  if present, `describe` prints describe.err to stderr and exits describe.rc
#   jobs             one line per `ssh` running the job: "STATUS [NEW_STATE]" (the last line repeats)
#   home/            `scp` copies there and `ssh` runs a non-job command there (the worker's login directory)
FAKE_GCLOUD = """d={d}
printf '%s\\n' "$*" >> "$d/calls.log"
case "$4" in  # gcloud compute tpus tpu-vm VERB
  describe)
    if [[ -f $d/describe.err ]]; then cat "$d/describe.err" >&2; exit "$(cat "$d/describe.rc")"; fi
    cat "$d/state" ;;
  create)
    if [[ -f $d/describe.err ]]; then echo "ERROR: ALREADY_EXISTS" >&2; exit 1; fi
    echo READY > "$d/state" ;;
  scp)
    mkdir -p "$d/home"
    for a in "$@"; do [[ $a == *:* && $a != --* ]] && dest=${{a#*:}}; done
    for a in "$@"; do
      if [[ -f $a ]]; then stat -c %a "$a" > "$d/scp.mode"; cp "$a" "$d/home/$dest"; fi
    done ;;
  ssh)
    for a in "$@"; do [[ $a == --command=* ]] && command=${{a#--command=}}; done
    if [[ $command == *" transcribe "* ]]; then
      n=$(cat "$d/jobs.count" 2>/dev/null || echo 0)
      echo $((n + 1)) > "$d/jobs.count"
      line=$(sed -n "$((n + 1))p" "$d/jobs")
      [[ -n $line ]] || line=$(tail -n 1 "$d/jobs")
      read -r status new_state <<< "$line"
      [[ -z $new_state ]] || echo "$new_state" > "$d/state"
      exit "$status"
    fi
    mkdir -p "$d/home"
    cd "$d/home" && bash -c "$command" ;;
esac
"""

# `python -m venv DIR` makes DIR/bin/pip, which logs its arguments.
FAKE_PYTHON = """[[ $1 == -m && $2 == venv ]] || exit 9
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\necho "pip $*" >> {d}/pip.log\\n' > "$3/bin/pip"
chmod +x "$3/bin/pip"
"""


def _fake_tpu(tmp_path: Path, state: str = "READY", jobs: tuple[str, ...] = ("0",), describe_err: str | None = None,
              describe_rc: int = 1) -> Path:
    (tmp_path / "state").write_text(state)
    (tmp_path / "jobs").write_text("\n".join(jobs) + "\n")
    if describe_err is not None:
        (tmp_path / "describe.err").write_text(describe_err + "\n")
        (tmp_path / "describe.rc").write_text(str(describe_rc))
    _executable(tmp_path / "bin" / "gcloud", FAKE_GCLOUD.format(d=tmp_path))
    _executable(tmp_path / "bin" / "fakepython", FAKE_PYTHON.format(d=tmp_path))
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "hello.txt").write_text("hi\n")
    return tmp_path / "bin"


def _verbs(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return [line.split()[3] for line in log.read_text().splitlines()] if log.exists() else []


def _watch(tmp_path: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return _launch("tpu_vm.sh", "watch", "--name", "p", "--zone", "z", "--type", "v5litepod-8", "--inputs",
                   "/m/list.txt", "--output-dir", "/m/out", "--interval", "0", "--source", str(tmp_path / "src"),
                   "--python", "fakepython", *args, fakes=tmp_path / "bin", tmp=tmp_path / "tmp", timeout=timeout)


def test_tpu_install_uses_a_private_temporary_tarball_per_run():
    def paths(calls):
        tar, scp, ssh = calls
        local = tar[tar.index("-czf") + 1]
        assert scp[5] == local
        remote = next(a for a in scp if a.startswith("p:")).split(":", 1)[1]
        return local, remote, " ".join(_remote(ssh))

    first = paths(_dry("tpu_vm.sh", "install", "--name", "p", "--zone", "z"))
    second = paths(_dry("tpu_vm.sh", "install", "--name", "p", "--zone", "z"))
    for local, remote, command in (first, second):
        assert "whisper-nnx-src.tar.gz" not in local + remote
        assert not Path(local).exists()  # a dry run creates nothing
        assert f"tar -xzf {remote} -C whisper-nnx" in command
        assert command.index(f"tar -xzf {remote}") < command.index(f"rm -f {remote}") < command.index("-m venv")
    assert first[0] != second[0] and first[1] != second[1]


def test_tpu_install_copies_extracts_and_removes_the_tarball(tmp_path):
    fakes = _fake_tpu(tmp_path)
    proc = _launch("tpu_vm.sh", "install", "--name", "p", "--zone", "z", "--source", str(tmp_path / "src"),
                   "--python", "fakepython", fakes=fakes, tmp=tmp_path / "tmp")
    assert proc.returncode == 0, proc.stderr
    assert _verbs(tmp_path) == ["scp", "ssh"]
    assert (tmp_path / "scp.mode").read_text().strip() == "600"  # not readable by other users while it exists
    home = tmp_path / "home"
    assert (home / "whisper-nnx" / "hello.txt").read_text() == "hi\n"
    assert sorted(p.name for p in home.iterdir()) == ["whisper-nnx"]  # the remote tarball is gone after extraction
    assert (tmp_path / "pip.log").read_text().split() == ["pip", "install", "-q", "-e", "./whisper-nnx[tpu]"]
    assert list((tmp_path / "tmp").iterdir()) == []  # and so is the local one


def test_tpu_install_removes_the_local_tarball_when_the_copy_fails(tmp_path):
    fakes = _fake_tpu(tmp_path)
    _executable(fakes / "gcloud", f'echo "$*" >> {tmp_path}/calls.log; echo "scp: connection lost" >&2; exit 7\n')
    proc = _launch("tpu_vm.sh", "install", "--name", "p", "--zone", "z", "--source", str(tmp_path / "src"),
                   fakes=fakes, tmp=tmp_path / "tmp")
    assert proc.returncode == 7 and "connection lost" in proc.stderr
    assert _verbs(tmp_path) == ["scp"]
    local = (tmp_path / "calls.log").read_text().split()[4]  # compute tpus tpu-vm scp LOCAL ...
    assert Path(local).parent == tmp_path / "tmp" and not Path(local).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


NOT_FOUND = ("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'projects/x/locations/z/nodes/p' "
             "was not found")
AUTH = "ERROR: (gcloud.compute.tpus.tpu-vm.describe) There was a problem refreshing your current auth tokens"


@pytest.mark.parametrize("err,rc,stdout,status", [
    (None, 0, "READY", 0),
    (NOT_FOUND, 1, "MISSING", 0),
    ("ERROR: node p not found", 1, "MISSING", 0),
    (AUTH, 1, "UNKNOWN", 1),
    ("ERROR: (gcloud) Quota exceeded for quota metric 'Read requests'", 1, "UNKNOWN", 1),
    ("bash: gcloud: command not found", 127, "UNKNOWN", 1),  # no gcloud: not a missing VM
])
def test_tpu_state_is_missing_only_when_gcloud_says_not_found(tmp_path, err, rc, stdout, status):
    fakes = _fake_tpu(tmp_path, describe_err=err, describe_rc=rc)
    proc = _launch("tpu_vm.sh", "state", "--name", "p", "--zone", "z", fakes=fakes, tmp=tmp_path / "tmp")
    assert (proc.stdout.strip(), proc.returncode) == (stdout, status), proc.stderr
    if stdout == "UNKNOWN":
        assert err in proc.stderr and f"exit status {rc}" in proc.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_tpu_watch_never_creates_a_vm_it_cannot_describe(tmp_path):
    _fake_tpu(tmp_path, describe_err=AUTH)
    proc = _watch(tmp_path, "--max-retries", "2", timeout=10)
    assert proc.returncode == 1, proc.stderr
    assert _verbs(tmp_path) == ["describe"] * 3  # the first try and two retries; nothing created or deleted
    assert proc.stderr.count(AUTH) == 3
    assert "giving up: could not describe TPU VM p 3 times in a row" in proc.stderr


def test_tpu_watch_waits_out_a_describe_failure(tmp_path):
    """describe fails twice, then answers READY: the job runs once."""
    _fake_tpu(tmp_path, describe_err=AUTH)
    counter = tmp_path / "describes"
    gcloud = tmp_path / "bin" / "gcloud"
    _executable(gcloud, f"""n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}
[[ $4 == describe && $n -ge 2 ]] && rm -f {tmp_path}/describe.err
""" + gcloud.read_text().split("\n", 1)[1])
    proc = _watch(tmp_path, "--max-retries", "3", timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert _verbs(tmp_path) == ["describe", "describe", "describe", "ssh"]
    assert proc.stderr.count(AUTH) == 2 and "job finished" in proc.stdout


def test_tpu_watch_gives_up_after_max_retries_failed_reruns(tmp_path):
    _fake_tpu(tmp_path, jobs=("1",))
    proc = _watch(tmp_path, "--max-retries", "2", timeout=10)
    assert proc.returncode == 1, proc.stderr
    # Each failure is followed by a describe (still READY), a wait and a describe before the rerun: the first run
    # and two retries, then the VM is still READY after the third failure.
    assert _verbs(tmp_path) == ["describe", "ssh", "describe", "describe", "ssh", "describe", "describe", "ssh",
                                "describe"]
    assert proc.stderr.count("job failed with exit status 1") == 3
    assert ("giving up: the job failed 3 times in a row on READY TPU VM p (last exit status 1; --max-retries 2)"
            in proc.stderr)


@pytest.mark.parametrize("status,stdout,stderr", [
    (3, "job finished; some inputs have error records (see /m/out/results.jsonl)", ""),
    (2, "", "usage or configuration error (exit status 2)"),
])
def test_tpu_watch_stops_at_a_finished_job_or_a_configuration_error(tmp_path, status, stdout, stderr):
    _fake_tpu(tmp_path, jobs=(str(status),))
    proc = _watch(tmp_path, timeout=10)
    assert proc.returncode == status, proc.stderr
    assert _verbs(tmp_path) == ["describe", "ssh"]  # not rerun
    assert stdout in proc.stdout and stderr in proc.stderr


def test_tpu_watch_does_not_count_preemption_as_a_failed_rerun(tmp_path):
    """With one retry allowed: a failure, a failure caused by preemption (the VM is recreated, the count starts
    again), a failure, then success."""
    _fake_tpu(tmp_path, jobs=("1", "255 PREEMPTED", "1", "0"))
    proc = _watch(tmp_path, "--max-retries", "1", timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert _verbs(tmp_path) == ["describe", "ssh", "describe",        # fails, still READY
                                "describe", "ssh", "describe",        # fails, PREEMPTED
                                "delete", "create", "scp", "ssh",      # recreate + install
                                "describe", "ssh", "describe",        # fails, READY
                                "describe", "ssh"]                    # finishes
    assert "job finished" in proc.stdout and "recreating" in proc.stderr
    assert "giving up" not in proc.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ray_cluster_up_installs_everywhere_and_joins_workers_to_the_head():
    calls = _dry("ray_cluster.sh", "up", "--head", "h0", "--workers", "h1,h2", "--port", "6380", "--extra", "tpu")
    rsyncs = [c for c in calls if c[0] == "rsync"]
    assert [c[-1] for c in rsyncs] == ["h0:whisper-nnx/", "h1:whisper-nnx/", "h2:whisper-nnx/"]
    installs = [_remote(c) for c in calls if c[0] == "ssh" and "pip" in c[-1]]
    assert [c[:2] for c in calls if c[0] == "ssh" and "pip" in c[-1]] == [["ssh", "h0"], ["ssh", "h1"], ["ssh", "h2"]]
    assert all("./whisper-nnx[tpu,ray]" in " ".join(i) for i in installs)
    starts = [(c[1], _remote(c)) for c in calls if c[0] == "ssh" and " start " in f" {c[-1]} "]
    ray, quiet = "whisper-nnx/.venv/bin/ray", "--disable-usage-stats"
    assert starts == [("h0", [ray, "start", "--head", "--port", "6380", quiet]),
                      ("h1", [ray, "start", "--address", "h0:6380", quiet]),
                      ("h2", [ray, "start", "--address", "h0:6380", quiet])]
    assert calls.index(next(c for c in calls if "--head" in c[-1])) > calls.index(rsyncs[-1])  # installed first


def test_ray_cluster_submit_runs_the_driver_on_the_head():
    calls = _dry("ray_cluster.sh", "submit", "--head", "h0", "--workers", "h1,h2", "--inputs", "s3://b/my list.jsonl",
                 "--output-dir", "s3://b/out", "--model", "base", "--gpus-per-actor", "1", "--", "--resume")
    assert len(calls) == 1 and calls[0][:2] == ["ssh", "h0"]
    assert _remote(calls[0]) == ["whisper-nnx/.venv/bin/whisper-nnx", "transcribe", "s3://b/my list.jsonl",
                                 "--model", "base", "--output-dir", "s3://b/out", "--ray", "h0:6379",
                                 "--ray-actors", "3", "--ray-gpus-per-actor", "1", "--resume"]


def test_ray_cluster_down_stops_every_host():
    calls = _dry("ray_cluster.sh", "down", "--head", "h0", "--workers", "h1")
    assert [(c[1], _remote(c)) for c in calls] == [("h1", ["whisper-nnx/.venv/bin/ray", "stop"]),
                                                  ("h0", ["whisper-nnx/.venv/bin/ray", "stop"])]


@pytest.mark.parametrize("args, message", [(["submit", "--head", "h0"], "--inputs"), (["up"], "--head"),
                                           (["up", "--head", "h0", "--extra", "rocm"], "--extra")])
def test_ray_cluster_bad_arguments(args, message):
    proc = subprocess.run(["bash", str(LAUNCH / "ray_cluster.sh"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


# --- issue 25: option-like host names, an output folder inside the remote checkout ------------------------------

def _stubs(tmp_path: Path) -> Path:
    """ssh, rsync and gcloud that only log their argv: a call reaching them is seen."""
    for tool in ("ssh", "rsync", "gcloud"):
        _executable(tmp_path / "bin" / tool, f'printf "%s\\n" "{tool} $*" >> "{tmp_path}/calls.log"\n')
    return tmp_path / "bin"


@pytest.mark.parametrize("script,args", [
    ("gpu_host.sh", ["install", "--host", "-oProxyCommand=touch /tmp/pwned"]),
    ("gpu_host.sh", ["run", "--host", "-oProxyCommand=x", "--inputs", "/i", "--output-dir", "/o"]),
    ("gpu_host.sh", ["run", "--hosts", "gpu-a,-oProxyCommand=x", "--inputs", "/i", "--output-dir", "/o"]),
    ("gpu_host.sh", ["install", "--hosts", "gpu-a,-e sh"]),
    ("ray_cluster.sh", ["up", "--head", "-oProxyCommand=x"]),
    ("ray_cluster.sh", ["up", "--head", "h0", "--workers", "h1,-oProxyCommand=x"]),
    ("ray_cluster.sh", ["down", "--head", "h0", "--workers", "-x"]),
    ("tpu_vm.sh", ["run", "--name", "--project=other", "--zone", "z", "--inputs", "/i", "--output-dir", "/o"]),
])
def test_a_host_name_starting_with_a_dash_is_refused_before_any_call(tmp_path, script, args):
    proc = _launch(script, *args, fakes=_stubs(tmp_path), tmp=tmp_path / "tmp")
    assert proc.returncode == 2, proc.stderr
    assert "starts with '-'" in proc.stderr
    assert not (tmp_path / "calls.log").exists()  # neither ssh, rsync nor gcloud ran


@pytest.mark.parametrize("output_dir", ["whisper-nnx/out", "./whisper-nnx/results", "~/whisper-nnx/o",
                                        "/home/me/whisper-nnx/out", "/root/whisper-nnx/x/y", "whisper-nnx"])
@pytest.mark.parametrize("script,args", [
    ("gpu_host.sh", ["run", "--host", "gpu-a", "--inputs", "/i"]),
    ("gpu_host.sh", ["run", "--hosts", "gpu-a,gpu-b", "--inputs", "/i"]),
    ("ray_cluster.sh", ["submit", "--head", "h0", "--inputs", "/i"]),
    ("tpu_vm.sh", ["run", "--name", "p", "--zone", "z", "--inputs", "/i"]),
])
def test_an_output_folder_inside_the_remote_checkout_is_refused(tmp_path, script, args, output_dir):
    """install/up replace the checkout (rsync --delete, or rm -rf and unpack): results there would be wiped."""
    proc = _launch(script, *args, "--output-dir", output_dir, fakes=_stubs(tmp_path), tmp=tmp_path / "tmp")
    assert proc.returncode == 2, proc.stderr
    assert "inside the remote checkout" in proc.stderr
    assert not (tmp_path / "calls.log").exists()


@pytest.mark.parametrize("output_dir", ["/nfs/out", "whisper-nnx-out", "out/whisper-nnx", "gs://b/whisper-nnx/o"])
def test_output_folders_outside_the_checkout_are_kept(tmp_path, output_dir):
    proc = _launch("ray_cluster.sh", "submit", "--head", "h0", "--inputs", "/i", "--output-dir", output_dir,
                   fakes=_stubs(tmp_path), tmp=tmp_path / "tmp")
    assert proc.returncode == 0, proc.stderr
    call = (tmp_path / "calls.log").read_text().splitlines()
    assert len(call) == 1 and call[0].startswith("ssh h0 ") and output_dir in call[0]
