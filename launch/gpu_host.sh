#!/usr/bin/env bash
# Install and run whisper-nnx on NVIDIA GPU hosts, over ssh or on this machine.
#
#   launch/gpu_host.sh install [--host H] [--python python3.11] [--source DIR]
#   launch/gpu_host.sh run     [--host H] --inputs MANIFEST --output-dir DIR [--model M]
#                              [--mesh data=-1] [-- EXTRA whisper-nnx transcribe ARGS...]
#   launch/gpu_host.sh run     --hosts H0,H1,... --port 12345 ...   (one process per host)
#
# Without --host the commands run locally. With --hosts, one process per host joins one global
# mesh: host 0 is the coordinator and every host needs the inputs and the output directory on
# shared storage. --dry-run prints every command instead of running it.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST="" HOSTS="" PORT=12345 PYTHON="python3.11" SOURCE="" INPUTS="" OUTPUT_DIR="" MODEL="large-v3"
MESH="data=-1" EXTRA=()
REMOTE_DIR=whisper-nnx

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

parse() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --host) need_value "$1" "${2:-}"; HOST=$2; shift 2 ;;
      --hosts) need_value "$1" "${2:-}"; HOSTS=$2; shift 2 ;;
      --port) need_value "$1" "${2:-}"; PORT=$2; shift 2 ;;
      --python) need_value "$1" "${2:-}"; PYTHON=$2; shift 2 ;;
      --source) need_value "$1" "${2:-}"; SOURCE=$2; shift 2 ;;
      --inputs) need_value "$1" "${2:-}"; INPUTS=$2; shift 2 ;;
      --output-dir) need_value "$1" "${2:-}"; OUTPUT_DIR=$2; shift 2 ;;
      --model) need_value "$1" "${2:-}"; MODEL=$2; shift 2 ;;
      --mesh) need_value "$1" "${2:-}"; MESH=$2; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      *) die "unknown argument $1 (see $0 --help)" ;;
    esac
  done
}

on_host() {  # on_host HOST REMOTE_COMMAND (HOST empty: run here)
  if [[ -z "$1" ]]; then
    run bash -c "$2"
  else
    run ssh "$1" "$2"
  fi
}

install_on() {
  local host=$1 src=${SOURCE:-$(cd "$(dirname "$0")/.." && pwd)}
  if [[ -n "$host" ]]; then
    run rsync -a --delete --exclude=.venv --exclude=.git "$src/" "$host:$REMOTE_DIR/"
    on_host "$host" "$(quote_cmd "$PYTHON" -m venv "$REMOTE_DIR/.venv") && \
$(quote_cmd "$REMOTE_DIR/.venv/bin/pip" install -q -e "./$REMOTE_DIR[cuda]")"
  else
    on_host "" "$(quote_cmd "$PYTHON" -m venv "$src/.venv") && $(quote_cmd "$src/.venv/bin/pip" install -q -e "$src[cuda]")"
  fi
}

transcribe_command() {  # transcribe_command BIN [extra args]
  local bin=$1
  shift
  quote_cmd "$bin" transcribe "$INPUTS" --model "$MODEL" --output-dir "$OUTPUT_DIR" --mesh "$MESH" "$@" \
    ${EXTRA[@]+"${EXTRA[@]}"}
}

run_job() {
  [[ -n "$INPUTS" && -n "$OUTPUT_DIR" ]] || die "run needs --inputs and --output-dir"
  if [[ -z "$HOSTS" ]]; then
    local bin=$REMOTE_DIR/.venv/bin/whisper-nnx
    [[ -n "$HOST" ]] || bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/whisper-nnx"
    on_host "$HOST" "$(transcribe_command "$bin")"
    return
  fi
  IFS=, read -r -a hosts <<< "$HOSTS"
  local coordinator="${hosts[0]}:$PORT" i
  for i in "${!hosts[@]}"; do  # one process per host, all started together
    on_host "${hosts[$i]}" "$(transcribe_command "$REMOTE_DIR/.venv/bin/whisper-nnx" \
      --coordinator "$coordinator" --num-processes "${#hosts[@]}" --process-id "$i")" &
  done
  wait
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case "$cmd" in -h|--help) usage ;; esac
  parse "$@"
  case "$cmd" in
    install)
      if [[ -n "$HOSTS" ]]; then
        IFS=, read -r -a hosts <<< "$HOSTS"
        for h in "${hosts[@]}"; do install_on "$h"; done
      else
        install_on "$HOST"
      fi
      ;;
    run) run_job ;;
    *) die "unknown command $cmd (install, run)" ;;
  esac
}

main "$@"
