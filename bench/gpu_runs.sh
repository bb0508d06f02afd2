#!/usr/bin/env bash
# Train the named runs on a lent GPU machine, all at once (each its own process sharing the GPU), with
# no DVC there: the data stages run as plain `python -m stages.<name>`. Back here, copy
# results/runs/<run> and results/metrics/<run>.json in and `dvc commit -f train@<run> ...`.
#   bash bench/gpu_runs.sh RUN [RUN ...]   -> ${JOB_OUT:-out}/ (progress, logs, device.txt, finished, DONE)
# Run it detached and poll for out/DONE (bench/README.md: long device jobs).
set -uo pipefail
O="${JOB_OUT:-out}"; mkdir -p "$O/logs"  # not $OUT: a detached job outlives the call that owns $OUT
export MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1  # a crash prints its Python stack
T0=$(date +%s); p() { echo "$(( $(date +%s) - T0 )) s $*" >> "$O/progress"; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } > "$O/device.txt"
p start
python3 -m stages.download > "$O/logs/data.log" 2>&1 && python3 -m stages.permutations >> "$O/logs/data.log" 2>&1
p "data rc $?"
for r in "$@"; do
  ( python3 -m stages.train "$r" > "$O/logs/$r.log" 2>&1; rc=$?; [ $rc = 0 ] && echo "$r" >> "$O/finished"; p "$r rc $rc" ) &
done
wait; p done; touch "$O/DONE"
