#!/bin/bash
# jssl on a Cloud TPU VM slice: create (or reuse) it, install jssl on every worker, run python -m jssl.main on all
# workers at once, stream worker 0's log, stop the job, delete the slice. Walk-through: launch/README.md.
#
#   launch/tpu_pod.sh create | install | run ARGS... | logs | stop | delete | up ARGS...
#
# ARGS go to python -m jssl.main (--config and --workdir=gs://... required). `up` is create + install + run.
# Knobs (environment):
#   PROJECT, ZONE          GCP project and zone (required)
#   ACCELERATOR_TYPE       TPU type, e.g. v4-32, v5litepod-16 (required by create / up)
#   RUNTIME_VERSION        TPU VM image (default: tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5e, ...)
#   JSSL_TPU_NAME          name of the slice (default jssl)
#   SPOT=1                 spot capacity (cheaper, can be preempted)
#   QUEUED=1               a queued resource (gcloud compute tpus queued-resources), waits until it is ACTIVE
#   JSSL_REPO_URL          git URL to clone on the workers (JSSL_REPO_REF: its branch / tag); default: a tarball of
#                          this checkout's HEAD copied with tpu-vm scp
#   JSSL_ENV               'VAR=value ...' set for jssl.main on the workers (e.g. TFDS_DATA_DIR=gs://bucket/tfds)
#   DRY_RUN=1              print every command (one a line, exactly as it would run) instead of running it;
#                          read-only probes (describe) are skipped and the slice is taken as absent
set -euo pipefail
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$LAUNCH_DIR")
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

TPU_NAME=${JSSL_TPU_NAME:-jssl}
# the remote shell expands ~ (each worker's home): these are the same paths on every worker, one log per worker
# shellcheck disable=SC2088
REMOTE_DIR='~/jssl'
# shellcheck disable=SC2088
REMOTE_LOG='~/jssl.log'
# shellcheck disable=SC2088
REMOTE_PID='~/jssl.pid'

usage() {
  echo "usage: $(basename "$0") create | install | run ARGS... | logs | stop | delete | up ARGS...  (see the header)" >&2
  exit 2
}

default_runtime() {
  case $1 in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# exists KIND: the slice (tpu-vm) or queued resource (queued-resources) is there already (never under DRY_RUN);
# a preempted / stopped slice cannot be reused
exists() {
  [[ ${DRY_RUN:-0} != 1 ]] || return 1
  local state
  state=$(gcloud compute tpus "$1" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)' 2> /dev/null) || return 1
  case $state in
    *PREEMPTED* | *TERMINATED* | *STOPPED* | *SUSPENDED* | *FAILED*)
      echo "$(basename "$0"): $TPU_NAME is $state: run \`$(basename "$0") delete\` first" >&2
      exit 1
      ;;
  esac
}

# tpu_ssh WORKER COMMAND: the command on one worker (0) or all of them at once (all)
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

wait_active() {
  [[ ${DRY_RUN:-0} == 1 ]] && return
  local state
  while true; do
    state=$(gcloud compute tpus queued-resources describe "$TPU_NAME" "${WHERE[@]}" --format='value(state.state)')
    case $state in
      ACTIVE) return ;;
      FAILED | SUSPENDED) echo "$(basename "$0"): queued resource $TPU_NAME is $state: delete it first" >&2; exit 1 ;;
    esac
    echo "waiting for queued resource $TPU_NAME (state $state)" >&2
    sleep 30
  done
}

create() {
  require_env ACCELERATOR_TYPE "the TPU type, e.g. v4-32"
  local runtime=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
  local spot=()
  [[ ${SPOT:-0} == 1 ]] && spot=(--spot)
  if [[ ${QUEUED:-0} == 1 ]]; then
    if exists queued-resources; then
      echo "reusing queued resource $TPU_NAME" >&2
    else
      run gcloud compute tpus queued-resources create "$TPU_NAME" "${WHERE[@]}" --node-id="$TPU_NAME" \
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$runtime" "${spot[@]}"
    fi
    wait_active
  elif exists tpu-vm; then
    echo "reusing TPU VM $TPU_NAME" >&2
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$runtime" "${spot[@]}"
  fi
}

install() {
  local pip="python3 -m pip install -e $REMOTE_DIR \"jax[tpu]\""
  if [[ -n ${JSSL_REPO_URL:-} ]]; then
    local branch=''
    [[ -n ${JSSL_REPO_REF:-} ]] && branch="--branch=$(quote "$JSSL_REPO_REF") "
    tpu_ssh all "rm -rf $REMOTE_DIR && git clone --depth=1 $branch$(quote "$JSSL_REPO_URL") $REMOTE_DIR && $pip"
  else
    local tarball=${TMPDIR:-/tmp}/jssl-$TPU_NAME.tar.gz
    if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no) ]]; then
      echo "$(basename "$0"): warning: uncommitted changes are not installed (the workers get git HEAD)" >&2
    fi
    run git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:~/jssl.tar.gz" "${WHERE[@]}" --worker=all
    tpu_ssh all "rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR && tar -xzf ~/jssl.tar.gz -C $REMOTE_DIR && $pip"
  fi
}

logs() {
  tpu_ssh 0 "tail -n +1 -F $REMOTE_LOG"
}

# run_job ARGS...: jssl.main on every worker at once, detached (nohup, a log and a pid file per worker), then logs
run_job() {
  local arg
  for arg in "$@"; do
    case $arg in
      --workdir=gs://*) ;;
      --workdir=*) echo "$(basename "$0"): warning: $arg is not on gs://: every worker must see the same workdir" >&2 ;;
    esac
  done
  local env_prefix=''
  [[ -n ${JSSL_ENV:-} ]] && env_prefix="env $JSSL_ENV "
  tpu_ssh all "cd $REMOTE_DIR && nohup ${env_prefix}python3 -m jssl.main $(quote_all "$@") > $REMOTE_LOG 2>&1 < /dev/null & echo \$! > $REMOTE_PID"
  logs
}

stop() {
  tpu_ssh all "if [ -f $REMOTE_PID ]; then kill \$(cat $REMOTE_PID) || true; rm -f $REMOTE_PID; fi"
}

delete() {
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${WHERE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${WHERE[@]}" --quiet
  fi
}

[[ $# -ge 1 ]] || usage
command=$1
shift
[[ ${1:-} == -- ]] && shift
case $command in
  create | install | logs | stop | delete) [[ $# -eq 0 ]] || die "$command takes no arguments (got: $*)" ;;
  run | up) require_main_args "$@" ;;
  *) usage ;;
esac
require_env PROJECT "the GCP project of the TPU"
require_env ZONE "the zone of the TPU, e.g. us-central2-b"
WHERE=(--project="$PROJECT" --zone="$ZONE")

case $command in
  create) create ;;
  install) install ;;
  run) run_job "$@" ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  up) create && install && run_job "$@" ;;
esac
