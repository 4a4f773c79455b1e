#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice), install whisper-nnx on every worker, run a
# bulk transcription on all workers at once, watch for preemption, collect the results.
#
#   launch/tpu_vm.sh create  --name N --zone Z --type v5litepod-16 [--version V] [--spot]
#   launch/tpu_vm.sh install --name N --zone Z [--python python3.11] [--source DIR]
#   launch/tpu_vm.sh run     --name N --zone Z --inputs MANIFEST --output-dir DIR [--model M]
#                            [--mesh data=-1] [-- EXTRA whisper-nnx transcribe ARGS...]
#   launch/tpu_vm.sh watch   --name N --zone Z --type T --inputs ... --output-dir ... [--interval S]
#                            [--max-retries N]
#   launch/tpu_vm.sh state   --name N --zone Z
#   launch/tpu_vm.sh collect --name N --zone Z --output-dir DIR --to LOCAL_DIR
#   launch/tpu_vm.sh delete  --name N --zone Z
#
# Every subcommand takes --dry-run (print each command, run nothing). Inputs and the output
# directory must be on storage every worker sees (a GCS FUSE mount or NFS): each worker
# transcribes its own block of the inputs and process 0 merges the per-process results.
# `run` passes --distributed so JAX finds the pod's workers itself and exits with the job's status.
# `state` prints the VM's state: MISSING only when gcloud answers "not found", UNKNOWN (exit 1,
# gcloud's error shown) when describe fails otherwise (network, auth, quota).
# `watch` runs the job with --resume until it is done: exit 0 (every input transcribed) or 3
# (done, but some inputs have error records: see results.jsonl; rerunning won't help). A
# preempted, terminated or missing VM is recreated, reinstalled and the job rerun; that does not
# count as a failure. watch exits 2 at once when the job reports a usage/configuration error (2),
# and exits 1 after --max-retries N (default 3) retries in a row have failed on a READY VM (the
# last exit status is shown), or after N+1 describe failures in a row (UNKNOWN: it waits
# --interval seconds, default 300, between tries and never creates a VM then).

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" TYPE="" VERSION="v2-alpha-tpuv5-lite" SPOT=0 PYTHON="python3.11" SOURCE=""
INPUTS="" OUTPUT_DIR="" MODEL="large-v3" MESH="data=-1" INTERVAL=300 MAX_RETRIES=3 TO="" EXTRA=()

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 2; }  # the comment block above

parse() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) need_value "$1" "${2:-}"; NAME=$2; shift 2 ;;
      --zone) need_value "$1" "${2:-}"; ZONE=$2; shift 2 ;;
      --type) need_value "$1" "${2:-}"; TYPE=$2; shift 2 ;;
      --version) need_value "$1" "${2:-}"; VERSION=$2; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --python) need_value "$1" "${2:-}"; PYTHON=$2; shift 2 ;;
      --source) need_value "$1" "${2:-}"; SOURCE=$2; shift 2 ;;
      --inputs) need_value "$1" "${2:-}"; INPUTS=$2; shift 2 ;;
      --output-dir) need_value "$1" "${2:-}"; OUTPUT_DIR=$2; shift 2 ;;
      --model) need_value "$1" "${2:-}"; MODEL=$2; shift 2 ;;
      --mesh) need_value "$1" "${2:-}"; MESH=$2; shift 2 ;;
      --interval) need_value "$1" "${2:-}"; INTERVAL=$2; shift 2 ;;
      --max-retries) need_count "$1" "${2:-}"; MAX_RETRIES=$2; shift 2 ;;
      --to) need_value "$1" "${2:-}"; TO=$2; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      *) die "unknown argument $1 (see $0 --help)" ;;
    esac
  done
  [[ -n "$NAME" && -n "$ZONE" ]] || die "--name and --zone are required"
  check_host --name "$NAME"
  [[ -z "$OUTPUT_DIR" ]] || check_output_dir "$OUTPUT_DIR" "$REMOTE_DIR"
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }

ssh_all() {  # ssh_all REMOTE_COMMAND
  tpu ssh "$NAME" --worker=all --command="$1"
}

create() {
  [[ -n "$TYPE" ]] || die "create needs --type (e.g. v5litepod-8)"
  local extra=()
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  tpu create "$NAME" --accelerator-type="$TYPE" --version="$VERSION" ${extra[@]+"${extra[@]}"}
}

install() {
  local src=${SOURCE:-$(cd "$(dirname "$0")/.." && pwd)}
  local tarball remote
  # A fresh private file per run (removed on exit), and a name of its own in each worker's login
  # directory (remote paths are relative to it: ssh starts there), removed once extracted.
  new_temp tarball
  remote=whisper-nnx-src.${tarball##*.}.tar.gz
  run tar -czf "$tarball" -C "$src" --exclude=.venv --exclude=.git .
  tpu scp "$tarball" "$NAME:$remote" --worker=all
  [[ "$DRY_RUN" == 1 ]] || rm -f -- "$tarball"  # now, not only at exit: watch may install many times
  ssh_all "$(quote_cmd rm -rf "$REMOTE_DIR") && $(quote_cmd mkdir -p "$REMOTE_DIR") && \
$(quote_cmd tar -xzf "$remote" -C "$REMOTE_DIR"); extracted=\$?; $(quote_cmd rm -f "$remote"); \
[ \"\$extracted\" -eq 0 ] && $(quote_cmd "$PYTHON" -m venv "$REMOTE_DIR/.venv") && \
$(quote_cmd "$REMOTE_DIR/.venv/bin/pip" install -q -e "./$REMOTE_DIR[tpu]")"
}

transcribe_command() {  # the command each worker runs
  local args=(transcribe "$INPUTS" --model "$MODEL" --output-dir "$OUTPUT_DIR" --mesh "$MESH" --distributed)
  quote_cmd "$REMOTE_DIR/.venv/bin/whisper-nnx" "${args[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

run_job() {
  [[ -n "$INPUTS" && -n "$OUTPUT_DIR" ]] || die "run needs --inputs and --output-dir"
  ssh_all "$(transcribe_command "$@")"
}

DESCRIBE_ERR=""
VM_STATE=""

state() {  # sets VM_STATE: gcloud's state (READY, PREEMPTED, ...), MISSING or UNKNOWN
  if [[ "$DRY_RUN" == 1 ]]; then
    run gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format=value\(state\)
    VM_STATE=READY
    return
  fi
  [[ -n "$DESCRIBE_ERR" ]] || new_temp DESCRIBE_ERR
  local out status=0
  out=$(gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format='value(state)' 2>"$DESCRIBE_ERR") \
    || status=$?
  if [[ $status -eq 0 && -n "$out" ]]; then
    VM_STATE=$out
  elif [[ $status -ne 0 && $status -ne 127 ]] && grep -qiE 'NOT_FOUND|not found' "$DESCRIBE_ERR"; then
    VM_STATE=MISSING  # gcloud's answer; 127 is a shell's "gcloud: command not found"
  else
    # Network, auth, quota...: the VM may well exist, so say so and leave it alone.
    echo "warning: could not describe TPU VM $NAME (gcloud exit status $status):" >&2
    cat "$DESCRIBE_ERR" >&2
    VM_STATE=UNKNOWN
  fi
}

watch() {
  # Run to completion; when the VM is preempted (or gone), recreate it and resume. Failed runs on a
  # READY VM and failed describes are each bounded: at most MAX_RETRIES retries in a row.
  local rounds=0 failures=0 last_status=0 unknown=0 status just_failed=0 after_failure
  while true; do
    rounds=$((rounds + 1))
    state
    after_failure=$just_failed just_failed=0
    [[ "$VM_STATE" == UNKNOWN ]] || unknown=0
    case "$VM_STATE" in
      READY)
        if [[ $failures -gt $MAX_RETRIES ]]; then
          echo "giving up: the job failed $failures times in a row on READY TPU VM $NAME" \
            "(last exit status $last_status; --max-retries $MAX_RETRIES)" >&2
          return 1
        fi
        if [[ $after_failure == 1 ]]; then
          echo "TPU VM $NAME is still READY: rerunning in ${INTERVAL}s" \
            "(retry $failures of at most $MAX_RETRIES in a row)" >&2
        else
          status=0
          run_job --resume || status=$?
          case $status in
            0) echo "job finished"; return 0 ;;
            3) echo "job finished; some inputs have error records (see $OUTPUT_DIR/results.jsonl)"; return 3 ;;
            2) echo "error: the job stopped with a usage or configuration error (exit status 2);" \
                 "not retrying: fix it and run watch again" >&2
               return 2 ;;
          esac
          failures=$((failures + 1)) last_status=$status just_failed=1
          echo "job failed with exit status $status" >&2
          continue  # describe the VM now: a preemption explains the failure
        fi
        ;;
      PREEMPTED|TERMINATED|MISSING)
        echo "TPU VM $NAME is $VM_STATE: recreating" >&2
        failures=0  # a run that failed as the VM went away is not counted
        [[ "$VM_STATE" == MISSING ]] || tpu delete "$NAME" --quiet
        create
        install
        continue
        ;;
      UNKNOWN)
        unknown=$((unknown + 1))
        if [[ $unknown -gt $MAX_RETRIES ]]; then
          echo "giving up: could not describe TPU VM $NAME $unknown times in a row" \
            "(see gcloud's errors above; --max-retries $MAX_RETRIES)" >&2
          return 1
        fi
        echo "state of TPU VM $NAME unknown: describing it again in ${INTERVAL}s (not recreating it)" >&2
        ;;
    esac
    [[ "$DRY_RUN" == 1 && $rounds -ge 1 ]] && return 0
    run sleep "$INTERVAL"
  done
}

collect() {
  [[ -n "$OUTPUT_DIR" && -n "$TO" ]] || die "collect needs --output-dir and --to"
  run mkdir -p "$TO"
  tpu scp --recurse "$NAME:$OUTPUT_DIR/results.jsonl" "$TO/" --worker=0
}

REMOTE_DIR=whisper-nnx

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case "$cmd" in -h|--help) usage ;; esac
  parse "$@"
  case "$cmd" in
    create) create ;;
    install) install ;;
    run) run_job ;;
    watch) watch ;;
    state) state; echo "$VM_STATE"; [[ "$VM_STATE" != UNKNOWN ]] ;;
    collect) collect ;;
    delete) tpu delete "$NAME" --quiet ;;
    *) die "unknown command $cmd (create, install, run, watch, state, collect, delete)" ;;
  esac
}

main "$@"
