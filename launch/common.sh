# Shared helpers for the launch scripts (sourced, not run).
# `run CMD ARGS...` executes a command, or with DRY_RUN=1 prints it, shell-quoted, one per line,
# so what would run can be read, diffed and tested.

set -euo pipefail

DRY_RUN=${DRY_RUN:-0}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# A command line for a remote shell, every word quoted for that shell.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+=$(printf ' %q' "$word")
  done
  printf '%s' "${out# }"
}

need_value() {  # need_value FLAG VALUE
  [[ -n "${2:-}" ]] || die "$1 needs a value"
}

need_count() {  # need_count FLAG VALUE: a whole number
  [[ "${2:-}" =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '${2:-}'"
}

# Private temporary files (mktemp: a fresh name, mode 0600), all removed when the script exits,
# however it exits. `new_temp VAR` puts a new file's path in VAR (with DRY_RUN=1 only a fresh
# name: nothing is created); call it outside $(...) so the path is recorded in this shell.
TEMP_FILES=()
remove_temp_files() {
  [[ ${#TEMP_FILES[@]} -eq 0 ]] || rm -f -- "${TEMP_FILES[@]}"
}
trap remove_temp_files EXIT

new_temp() {  # new_temp VAR
  local path
  if [[ "$DRY_RUN" == 1 ]]; then
    path=$(mktemp -u "${TMPDIR:-/tmp}/whisper-nnx.XXXXXXXXXX")
  else
    path=$(mktemp "${TMPDIR:-/tmp}/whisper-nnx.XXXXXXXXXX")
  fi
  TEMP_FILES+=("$path")
  printf -v "$1" '%s' "$path"
}

# check_host FLAG NAME: a host (or VM) name that ssh, rsync or gcloud could take for an option
# (`-oProxyCommand=...`) is refused, as is an empty one.
check_host() {
  [[ -n "${2:-}" ]] || die "$1: empty host name"
  [[ "$2" != -* ]] || die "$1: host name '$2' starts with '-' (it would be read as an option)"
}

# check_output_dir DIR REMOTE_DIR: refuse an output folder inside the remote checkout, which
# `install`/`up` replace (rsync --delete, or rm -rf before unpacking): it would wipe the results.
# Relative remote paths start in the login directory, so `REMOTE_DIR/out`, `./REMOTE_DIR/out`,
# `~/REMOTE_DIR/out`, `/home/USER/REMOTE_DIR/out` and `/root/REMOTE_DIR/out` are refused.
check_output_dir() {
  local dir=$1 checkout=$2
  while [[ "$dir" == ./* ]]; do dir=${dir#./}; done
  dir=${dir#\~/}
  dir=${dir#\$HOME/}
  if [[ "$dir" == /home/*/* ]]; then
    dir=${dir#/home/*/}
  elif [[ "$dir" == /root/* ]]; then
    dir=${dir#/root/}
  fi
  while [[ "$dir" == ./* ]]; do dir=${dir#./}; done
  dir=${dir%/}
  if [[ "$dir" == "$checkout" || "$dir" == "$checkout"/* ]]; then
    die "--output-dir $1 is inside the remote checkout $checkout/, which install replaces (rsync --delete): \
choose a folder outside it"
  fi
}
