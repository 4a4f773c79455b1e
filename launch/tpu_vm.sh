#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice), install whisper-nnx on every worker, run a
# bulk transcription on all workers at once, watch for preemption, collect the results.
#
#   launch/tpu_vm.sh create  --name N --zone Z --type v5litepod-16 [--version V] [--spot]
#   launch/tpu_vm.sh install --name N --zone Z [--python python3.11] [--source DIR]
#   launch/tpu_vm.sh run     --name N --zone Z --inputs MANIFEST --output-dir DIR [--model M]
#                            [--mesh data=-1] [-- EXTRA whisper-nnx transcribe ARGS...]
#   launch/tpu_vm.sh watch   --name N --zone Z --type T --inputs ... --output-dir ... [--interval S]
#   launch/tpu_vm.sh collect --name N --zone Z --output-dir DIR --to LOCAL_DIR
#   launch/tpu_vm.sh delete  --name N --zone Z
#
# Every subcommand takes --dry-run (print each command, run nothing). Inputs and the output
# directory must be on storage every worker sees (a GCS FUSE mount or NFS): each worker
# transcribes its own block of the inputs and process 0 merges the per-process results.
# `run` passes --distributed so JAX finds the pod's workers itself; `watch` recreates a
# preempted (spot) VM, reinstalls, and reruns with --resume.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" TYPE="" VERSION="v2-alpha-tpuv5-lite" SPOT=0 PYTHON="python3.11" SOURCE=""
INPUTS="" OUTPUT_DIR="" MODEL="large-v3" MESH="data=-1" INTERVAL=300 TO="" EXTRA=()

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

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
      --to) need_value "$1" "${2:-}"; TO=$2; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      *) die "unknown argument $1 (see $0 --help)" ;;
    esac
  done
  [[ -n "$NAME" && -n "$ZONE" ]] || die "--name and --zone are required"
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
  local tarball=/tmp/whisper-nnx-src.tar.gz
  run tar -czf "$tarball" -C "$src" --exclude=.venv --exclude=.git .
  tpu scp "$tarball" "$NAME:/tmp/whisper-nnx-src.tar.gz" --worker=all
  # Remote paths are relative to the login directory (ssh starts there).
  ssh_all "$(quote_cmd rm -rf "$REMOTE_DIR") && $(quote_cmd mkdir -p "$REMOTE_DIR") && \
$(quote_cmd tar -xzf /tmp/whisper-nnx-src.tar.gz -C "$REMOTE_DIR") && \
$(quote_cmd "$PYTHON" -m venv "$REMOTE_DIR/.venv") && \
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

state() {
  if [[ "$DRY_RUN" == 1 ]]; then
    run gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format=value\(state\)
    echo READY
  else
    gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format='value(state)' 2>/dev/null || echo MISSING
  fi
}

watch() {
  # Run to completion; when the VM is preempted (or gone), recreate it and resume.
  local rounds=0
  while true; do
    rounds=$((rounds + 1))
    local current
    current=$(state | tail -n 1)
    case "$current" in
      READY)
        if run_job --resume; then
          echo "job finished"
          return 0
        fi
        ;;
      PREEMPTED|TERMINATED|MISSING)
        echo "TPU VM $NAME is $current: recreating" >&2
        [[ "$current" == MISSING ]] || tpu delete "$NAME" --quiet
        create
        install
        continue
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
    collect) collect ;;
    delete) tpu delete "$NAME" --quiet ;;
    *) die "unknown command $cmd (create, install, run, watch, collect, delete)" ;;
  esac
}

main "$@"
