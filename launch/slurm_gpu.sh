#!/bin/bash
#SBATCH --job-name=jssl
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --output=jssl-%j.log
#SBATCH --signal=TERM@120
# jssl on several GPU nodes under SLURM: srun starts python -m jssl.main once per GPU (default) or once per node, and
# the processes join one JAX job (coordinator on the first node). Submit from the jssl checkout; walk-through in
# launch/README.md:
#
#   sbatch [--nodes=N --gpus-per-node=G --ntasks-per-node=G] launch/slurm_gpu.sh --config=... --workdir=...
#   JSSL_PROCS_PER=host sbatch --ntasks-per-node=1 --cpus-per-task=64 launch/slurm_gpu.sh --config=... --workdir=...
#
# Knobs (environment, exported into the job by sbatch):
#   JSSL_PROCS_PER=gpu|host    one process per GPU (CUDA_VISIBLE_DEVICES=its local rank) or one per node (all GPUs)
#   JSSL_GPUS_PER_NODE         GPUs per node when SLURM does not say (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE)
#   JSSL_COORDINATOR_PORT      port of the JAX coordinator (default 20000 + job id % 20000)
#   JSSL_PYTHON                the python with jssl installed (default python)
#   JSSL_DIR                   the jssl checkout (default: the directory sbatch was run from)
#   DRY_RUN=1                  print the commands (one a line) instead of running them
set -euo pipefail
ROOT=${JSSL_DIR:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
if [[ ! -f $ROOT/launch/common.sh ]]; then
  echo "slurm_gpu.sh: $ROOT/launch/common.sh not found: submit from the jssl checkout or set JSSL_DIR" >&2
  exit 2
fi
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"

require_main_args "$@"
[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a SLURM job: submit it with sbatch (one machine without SLURM: launch/local_gpus.sh)"
require_env SLURM_JOB_NUM_NODES "set by SLURM in a job"
require_env SLURM_JOB_NODELIST "set by SLURM in a job"
nodes=$SLURM_JOB_NUM_NODES

case ${JSSL_PROCS_PER:-gpu} in
  gpu)
    gpus=${JSSL_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}}
    gpus=${gpus##*:}  # SLURM_GPUS_PER_NODE may read type:count
    [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "GPUs per node unknown ('$gpus'): sbatch --gpus-per-node=G or set JSSL_GPUS_PER_NODE"
    procs_per_node=$gpus
    # each task sees all of its node's GPUs and keeps the one of its local rank
    # shellcheck disable=SC2016
    bind='export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; '
    ;;
  host)
    procs_per_node=1
    bind=''
    ;;
  *) die "JSSL_PROCS_PER=$JSSL_PROCS_PER: valid: gpu, host" ;;
esac

# the first node hosts the coordinator (no `| head`: under pipefail scontrol's SIGPIPE would end the script)
hostnames=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
coordinator=${hostnames%%$'\n'*}
port=${JSSL_COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
run cd "$ROOT"
run export JAX_COORDINATOR_ADDRESS="$coordinator:$port"
run export JAX_NUM_PROCESSES=$((nodes * procs_per_node))
# bash -c: each task reads its own SLURM_PROCID / SLURM_LOCALID; jssl.main's arguments follow as "$@"
# shellcheck disable=SC2016
run srun --nodes="$nodes" --ntasks=$((nodes * procs_per_node)) --ntasks-per-node="$procs_per_node" \
  --kill-on-bad-exit=1 bash -c "export JAX_PROCESS_ID=\$SLURM_PROCID; ${bind}exec ${JSSL_PYTHON:-python} -m jssl.main \"\$@\"" \
  jssl "$@"
