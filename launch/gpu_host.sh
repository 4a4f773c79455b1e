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
# shared storage. --output-dir must not lie inside the remote checkout, which `install` replaces
# (rsync --delete); host names starting with '-' are refused. --dry-run prints every command
# instead of running it.
#
# `run` exits with whisper-nnx's status: 0 every input has a transcript; 3 the run finished but
# some inputs have error records (see OUTPUT_DIR/results.jsonl; rerunning won't help); 2 a usage
# or configuration error; anything else the run failed (rerun with `-- --resume` to continue).
# With --hosts it waits for every host, names each host that did not exit 0 and its status, and
# exits 0 if every host exited 0; else 2 if any host exited 2; else 1 if any host failed in any
# other way (non-zero, ssh failure, signal); else 3 (every host finished, some with error records).

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST="" HOSTS="" PORT=12345 PYTHON="python3.11" SOURCE="" INPUTS="" OUTPUT_DIR="" MODEL="large-v3"
MESH="data=-1" EXTRA=()
REMOTE_DIR=whisper-nnx

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 2; }  # the comment block above

parse() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --host) need_value "$1" "${2:-}"; check_host "$1" "$2"; HOST=$2; shift 2 ;;
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
  local h
  if [[ -n "$HOSTS" ]]; then
    IFS=, read -r -a hosts <<< "$HOSTS"
    for h in "${hosts[@]}"; do check_host --hosts "$h"; done
  fi
  [[ -z "$OUTPUT_DIR" || ( -z "$HOST" && -z "$HOSTS" ) ]] || check_output_dir "$OUTPUT_DIR" "$REMOTE_DIR"
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

report_status() {  # report_status WHO STATUS: say what a whisper-nnx exit status means, on stderr
  case $2 in
    0) ;;
    3) echo "$1 finished; some inputs have error records (see $OUTPUT_DIR/results.jsonl)" >&2 ;;
    *) echo "$1 failed with exit status $2" >&2 ;;
  esac
}

run_job() {
  [[ -n "$INPUTS" && -n "$OUTPUT_DIR" ]] || die "run needs --inputs and --output-dir"
  local status=0
  if [[ -z "$HOSTS" ]]; then
    local bin=$REMOTE_DIR/.venv/bin/whisper-nnx
    [[ -n "$HOST" ]] || bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/whisper-nnx"
    on_host "$HOST" "$(transcribe_command "$bin")" || status=$?
    report_status "host ${HOST:-localhost}" "$status"
    return "$status"
  fi
  IFS=, read -r -a hosts <<< "$HOSTS"
  local coordinator="${hosts[0]}:$PORT" i pids=() worst=0
  for i in "${!hosts[@]}"; do  # one process per host, all started together
    on_host "${hosts[$i]}" "$(transcribe_command "$REMOTE_DIR/.venv/bin/whisper-nnx" \
      --coordinator "$coordinator" --num-processes "${#hosts[@]}" --process-id "$i")" &
    pids+=($!)
  done
  for i in "${!hosts[@]}"; do  # every host, in order, whatever the others did
    status=0
    wait "${pids[$i]}" || status=$?
    report_status "host ${hosts[$i]} (process $i)" "$status"
    case $status in  # worst so far, in the order 0 < 3 < 1 (any failure) < 2
      0) ;;
      3) [[ $worst -ne 0 ]] || worst=3 ;;
      2) worst=2 ;;
      *) [[ $worst -eq 2 ]] || worst=1 ;;
    esac
  done
  case $worst in
    1) echo "error: the run failed on some hosts (above); rerun with \`-- --resume\` to continue it" >&2 ;;
    2) echo "error: a host reported a usage or configuration error (above); fix it before rerunning" >&2 ;;
  esac
  return "$worst"
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
