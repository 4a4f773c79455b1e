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
