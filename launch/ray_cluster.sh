#!/usr/bin/env bash
# A Ray cluster over TPU VMs or GPU hosts (ssh), a transcription job on it, and its teardown.
#
#   launch/ray_cluster.sh up     --head H0 [--workers H1,H2,...] [--port 6379] [--python python3.11]
#                                [--source DIR] [--extra cuda|tpu|none]
#   launch/ray_cluster.sh submit --head H0 --inputs INPUT --output-dir DIR [--model M] [--actors N]
#                                [--gpus-per-actor G] [--resources JSON] [-- EXTRA whisper-nnx ARGS...]
#   launch/ray_cluster.sh down   --head H0 [--workers H1,H2,...]
#
# `up` installs whisper-nnx on every host as launch/gpu_host.sh does (rsync, venv, pip install
# with the accelerator extra and `ray`), starts the head (`ray start --head`), then each worker
# joined to it. `submit` runs the driver on the head: `whisper-nnx transcribe --ray H0:PORT` with
# one actor per accelerator host by default (--actors: the number of hosts), writing to
# --output-dir (shared storage or an object-storage URL; the driver writes, so a local path on
# the head works too). A driver that dies is resumed by submitting again with `-- --resume`; a
# worker that dies has its blocks retried by Ray. `down` stops Ray on every host. On TPU VMs,
# give each worker's internal IP or ssh name (`gcloud compute tpus tpu-vm describe` lists them);
# Ray detects their TPU chips, and `--resources '{"TPU": 4}'` places one actor per host.
# Object-storage credentials are not sent from the driver (a job's runtime_env is readable through
# Ray's APIs): give every host its own (instance role, ~/.aws, or AWS_* variables where `ray start`
# runs). --output-dir must not lie inside the remote checkout, which `up` replaces (rsync --delete).
# Host names starting with '-' are refused. --dry-run prints every command instead of running it.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HEAD="" WORKERS="" PORT=6379 PYTHON="python3.11" SOURCE="" EXTRA_NAME="cuda" INPUTS="" OUTPUT_DIR=""
MODEL="large-v3" ACTORS="" GPUS="" RESOURCES="" EXTRA=()
REMOTE_DIR=whisper-nnx

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 2; }  # the comment block above

parse() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --head) need_value "$1" "${2:-}"; HEAD=$2; shift 2 ;;
      --workers) need_value "$1" "${2:-}"; WORKERS=$2; shift 2 ;;
      --port) need_count "$1" "${2:-}"; PORT=$2; shift 2 ;;
      --python) need_value "$1" "${2:-}"; PYTHON=$2; shift 2 ;;
      --source) need_value "$1" "${2:-}"; SOURCE=$2; shift 2 ;;
      --extra) need_value "$1" "${2:-}"; EXTRA_NAME=$2; shift 2 ;;
      --inputs) need_value "$1" "${2:-}"; INPUTS=$2; shift 2 ;;
      --output-dir) need_value "$1" "${2:-}"; OUTPUT_DIR=$2; shift 2 ;;
      --model) need_value "$1" "${2:-}"; MODEL=$2; shift 2 ;;
      --actors) need_count "$1" "${2:-}"; ACTORS=$2; shift 2 ;;
      --gpus-per-actor) need_value "$1" "${2:-}"; GPUS=$2; shift 2 ;;
      --resources) need_value "$1" "${2:-}"; RESOURCES=$2; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      *) die "unknown argument $1 (see $0 --help)" ;;
    esac
  done
  [[ -n "$HEAD" ]] || die "--head is required"
  check_host --head "$HEAD"
  local h
  while read -r h; do check_host --workers "$h"; done < <(workers)
  [[ -z "$OUTPUT_DIR" ]] || check_output_dir "$OUTPUT_DIR" "$REMOTE_DIR"
  case "$EXTRA_NAME" in cuda|tpu|none) ;; *) die "--extra must be cuda, tpu or none" ;; esac
}

workers() {  # the worker hosts, one per line
  [[ -z "$WORKERS" ]] || tr ',' '\n' <<< "$WORKERS"
}

install_on() {  # install_on HOST: the checkout, a venv, whisper-nnx with its accelerator and ray extras
  local host=$1 src=${SOURCE:-$(cd "$(dirname "$0")/.." && pwd)} extras="ray"
  [[ "$EXTRA_NAME" == none ]] || extras="$EXTRA_NAME,ray"
  run rsync -a --delete --exclude=.venv --exclude=.git "$src/" "$host:$REMOTE_DIR/"
  run ssh "$host" "$(quote_cmd "$PYTHON" -m venv "$REMOTE_DIR/.venv") && \
$(quote_cmd "$REMOTE_DIR/.venv/bin/pip" install -q -e "./$REMOTE_DIR[$extras]")"
}

up() {
  local host
  install_on "$HEAD"
  while read -r host; do install_on "$host"; done < <(workers)
  run ssh "$HEAD" "$(quote_cmd "$REMOTE_DIR/.venv/bin/ray" start --head --port "$PORT" --disable-usage-stats)"
  while read -r host; do
    run ssh "$host" "$(quote_cmd "$REMOTE_DIR/.venv/bin/ray" start --address "$HEAD:$PORT" --disable-usage-stats)"
  done < <(workers)
}

submit() {
  [[ -n "$INPUTS" && -n "$OUTPUT_DIR" ]] || die "submit needs --inputs and --output-dir"
  local actors=${ACTORS:-$(( $(workers | wc -l) + 1 ))} args=()
  [[ -z "$GPUS" ]] || args+=(--ray-gpus-per-actor "$GPUS")
  [[ -z "$RESOURCES" ]] || args+=(--ray-resources "$RESOURCES")
  run ssh "$HEAD" "$(quote_cmd "$REMOTE_DIR/.venv/bin/whisper-nnx" transcribe "$INPUTS" --model "$MODEL" \
    --output-dir "$OUTPUT_DIR" --ray "$HEAD:$PORT" --ray-actors "$actors" ${args[@]+"${args[@]}"} \
    ${EXTRA[@]+"${EXTRA[@]}"})"
}

down() {
  local host
  while read -r host; do run ssh "$host" "$(quote_cmd "$REMOTE_DIR/.venv/bin/ray" stop)"; done < <(workers)
  run ssh "$HEAD" "$(quote_cmd "$REMOTE_DIR/.venv/bin/ray" stop)"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case "$cmd" in
    -h|--help) usage ;;
    up) parse "$@"; up ;;
    submit) parse "$@"; submit ;;
    down) parse "$@"; down ;;
    *) die "unknown command $cmd (up, submit or down)" ;;
  esac
}

main "$@"
