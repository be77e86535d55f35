# Sourced by the launch scripts: one-line errors, printing or running commands (DRY_RUN=1), jssl.main's arguments.
# shellcheck shell=bash

# die MESSAGE: a launch script's one-line error for bad usage or a missing knob (exit 2)
die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# quote ARG: ARG as a shell reads it back: bare when plain, else in single quotes (--flag='value' for a flag)
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_all ARGS...: the arguments quoted, one space apart
quote_all() {
  local out='' arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

# run CMD ARGS...: runs the command, or with DRY_RUN=1 prints it on one line instead, exactly as it would run
run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

# require_env NAME WHAT: NAME must be set (WHAT says what it is)
require_env() {
  [[ -n ${!1:-} ]] || die "$1 is not set ($2)"
}

# require_main_args ARGS...: jssl.main's arguments must name --config and --workdir
require_main_args() {
  local arg has_config=0 has_workdir=0
  for arg in "$@"; do
    case $arg in
      --config | --config=*) has_config=1 ;;
      --workdir | --workdir=*) has_workdir=1 ;;
    esac
  done
  ((has_config)) || die "--config is required (the arguments after the subcommand go to python -m jssl.main)"
  ((has_workdir)) || die "--workdir is required (the arguments after the subcommand go to python -m jssl.main)"
}
