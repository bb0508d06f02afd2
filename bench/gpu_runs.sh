#!/usr/bin/env bash
# Train runs on a GPU machine without DVC: the data stages run as plain `python -m stages.<name>`, then
# every named run (none named: every run of params.yaml, the slow ones first) as its own process, JOBS
# at a time (default 1: processes only time-slice one GPU, so several at once are slower than one after
# another; bench/README.md). Back in your clone, copy results/runs/<run> and results/metrics/<run>.json
# in and `dvc commit -f train@<run> ...`: the lock then records what `dvc repro` would have.
#   [JOBS=N] bash bench/gpu_runs.sh [RUN ...]   -> ${JOB_OUT:-out}/ (progress, logs, device.txt, finished, DONE)
# out/progress grows as runs finish and out/DONE marks the end, for a job left running in the background.
set -uo pipefail
O="${JOB_OUT:-out}"; mkdir -p "$O/logs"
export MNIST_MIRROR="${MNIST_MIRROR:-$PWD/.mnist}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1  # a crash prints its Python stack
# Some container images set PYTHONDONTWRITEBYTECODE=1, so every process compiles torch's sources again
# (`import torch` 3.2-3.5 s instead of 1.5 s): write the bytecode once, outside the tree.
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-/tmp/pycache}"
T0=$(date +%s); p() { echo "$(( $(date +%s) - T0 )) s $*" >> "$O/progress"; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } > "$O/device.txt"
p start
{ python3 -m stages.download && python3 -m stages.permutations && python3 -m stages.split; } > "$O/logs/data.log" 2>&1
p "data rc $?"
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then  # every run, longest first, so the slow ones do not start last
  mapfile -t runs < <(python3 -c "from pmnist.config import load_params; print('\n'.join(load_params()['runs']))" |
    while read -r r; do case $r in nested_ssm*|m3*|deep_momentum*) echo "0 $r";; muon*) echo "1 $r";; *) echo "2 $r";; esac; done |
    sort -s -k1,1 | cut -d' ' -f2)
fi
train() {
  python3 -m stages.train "$1" > "$O/logs/$1.log" 2>&1; rc=$?
  [ $rc = 0 ] && echo "$1" >> "$O/finished"; p "$1 rc $rc"
}
export -f train p; export O T0
printf '%s\n' "${runs[@]}" | xargs -P "${JOBS:-1}" -n 1 bash -c 'train "$1"' _
p done; touch "$O/DONE"
