#!/bin/bash
# jssl on one machine with several GPUs, without SLURM: one process per GPU (default; JAX_PROCESS_ID 0..N-1 joined
# through a coordinator on localhost, CUDA_VISIBLE_DEVICES=i) or one process that sees all GPUs.
#
#   launch/local_gpus.sh --config=... --workdir=...
#   JSSL_PROCS_PER=host launch/local_gpus.sh --config=... --workdir=...
#
# Knobs (environment):
#   JSSL_PROCS_PER=gpu|host    one process per GPU or one for all of them
#   JSSL_NUM_GPUS              how many GPUs (default: what nvidia-smi -L lists)
#   JSSL_COORDINATOR_PORT      port of the JAX coordinator on localhost (default 12355)
#   JSSL_PYTHON                the python with jssl installed (default python)
#   DRY_RUN=1                  print the commands (one a line) instead of running them
set -euo pipefail
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

require_main_args "$@"
python=${JSSL_PYTHON:-python}
case ${JSSL_PROCS_PER:-gpu} in
  gpu) ;;
  host) run "$python" -m jssl.main "$@"; exit ;;
  *) die "JSSL_PROCS_PER=$JSSL_PROCS_PER: valid: gpu, host" ;;
esac

if [[ -z ${JSSL_NUM_GPUS:-} ]]; then
  command -v nvidia-smi > /dev/null || die "nvidia-smi not found: set JSSL_NUM_GPUS"
  JSSL_NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
fi
[[ $JSSL_NUM_GPUS =~ ^[1-9][0-9]*$ ]] || die "JSSL_NUM_GPUS=$JSSL_NUM_GPUS: want a count of GPUs >= 1"

pids=()
# stop_all SIGNAL: TERM makes every process save a checkpoint of one agreed step and exit 0 (docs/staying_up.md);
# KILL when one has failed: the others cannot save without it and would wait on it
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2> /dev/null || true; done
}
trap 'stop_all TERM; wait; exit 130' INT TERM
for ((i = 0; i < JSSL_NUM_GPUS; i++)); do
  proc=(env JAX_COORDINATOR_ADDRESS="localhost:${JSSL_COORDINATOR_PORT:-12355}" JAX_NUM_PROCESSES="$JSSL_NUM_GPUS"
    JAX_PROCESS_ID="$i" CUDA_VISIBLE_DEVICES="$i" "$python" -m jssl.main "$@")
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "$(quote_all "${proc[@]}") &"
  else
    "${proc[@]}" &
    pids+=($!)
  fi
done
[[ ${DRY_RUN:-0} == 1 ]] && exit 0
# the first process to fail takes the others down (they would wait on it forever)
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    stop_all KILL
  fi
done
exit $status
