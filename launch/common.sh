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
