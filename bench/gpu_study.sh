#!/usr/bin/env bash
# The study's training on a lent GPU machine (torch in its image, DVC from .whl/): the data stages by
# `dvc repro`, then every `train@<run>` as its own process, N at a time (the runs are launch-bound,
# so several share one GPU well; DVC's repro runs one stage at a time), then `dvc commit` records
# them in dvc.lock exactly as `dvc repro` would. Analysis stages run anywhere afterwards (CPU).
#   bash bench/gpu_study.sh [N]   -> ${OUT:-.}/study.tgz (dvc.lock, results/runs, results/metrics), logs
set -euo pipefail
jobs="${1:-4}"; out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site" PATH="$HOME/site/bin:$PATH" MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1
if [ ! -d .git ]; then
  git init -q && git add -A >/dev/null && git -c user.name=gpu -c user.email=gpu@localhost commit -qm copy
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
start=$(date +%s)
dvc repro download permutations split
runs=$(python3 -c "from pmnist.config import load_params; print(' '.join(load_params()['runs']))")
mkdir -p "$out/logs"
# longest first, so the slow runs do not start last
order=$(for r in $runs; do case $r in nested_ssm*|m3*|deep_momentum) echo "0 $r";; muon*) echo "1 $r";; *) echo "2 $r";; esac; done | sort | cut -d' ' -f2)
# RUNS_ONLY limits the runs (a second call finishing what a first could not); STUDY_DEADLINE_S stops
# the training at that many seconds so what finished can still be committed and sent back.
[ -n "${RUNS_ONLY:-}" ] && order="$RUNS_ONLY"
printf '%s\n' $order | timeout "${STUDY_DEADLINE_S:-100000}" xargs -P "$jobs" -I{} sh -c \
  'python3 -m stages.train {} > "$0/logs/{}.log" 2>&1 || echo "FAILED {}"' "$out" || echo "stopped at the deadline"
echo "training took $(( $(date +%s) - start )) s with $jobs at a time"
done_runs=$(for r in $order; do if grep -q "wall time" "$out/logs/$r.log" 2>/dev/null; then echo "train@$r"; fi; done)
echo "finished: $done_runs"
dvc commit -f $done_runs 2>&1 | tail -2
tar czf "$out/study.tgz" dvc.lock results/runs results/metrics "$out"/logs 2>/dev/null || tar czf "$out/study.tgz" dvc.lock "$out"/logs
grep -h "wall time" "$out"/logs/*.log || true
