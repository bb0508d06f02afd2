#!/usr/bin/env bash
# The README's several-GPU recipe, measured: one 4-experiment grid (the baseline's validation lr grid at
# the tuning protocol) run by DVC's queue twice on one machine, first with one worker, then with one
# worker per GPU, each pinned by the CUDA_VISIBLE_DEVICES of the `dvc queue start` that spawns it.
#   bash bench/gpu_queue.sh   -> ${OUT:-.}/queue.log (wall times, which GPU each worker's runs used)
set -uo pipefail
out="${OUT:-.}"; log="$out/queue.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site" PATH="$HOME/site/bin:$PATH" MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1
if [ ! -d .git ]; then git init -q && git add -A >/dev/null && git -c user.name=gpu -c user.email=gpu@localhost commit -qm copy; fi
git config user.name gpu; git config user.email gpu@localhost
{ nvidia-smi --query-gpu=index,name --format=csv,noheader; date -u; } > "$log"
dvc repro download permutations split >/dev/null 2>&1
grid() {  # $1: label; the rest: how to start the workers
  local label="$1"; shift
  dvc exp run --queue -S protocol.seed=1000 -S protocol.n_seeds=10 -S train.eval_split=validation \
      -S 'runs.baseline.lr=1e-5,2e-5,5e-5,1e-4' train@baseline >/dev/null 2>&1
  local start=$(date +%s)
  eval "$*"
  sleep 15
  while grep -qE "Queued|Running" <<<"$(dvc queue status)"; do  # (not a pipe: pipefail would end the loop)
    nvidia-smi --query-compute-apps=gpu_uuid,pid --format=csv,noheader >> "$out/apps_$label.txt"; sleep 5
  done
  echo "$label: 4 experiments in $(( $(date +%s) - start )) s; $(dvc queue status | grep -c Success) succeeded" | tee -a "$log"
  echo "  GPUs used: $(cut -d, -f1 "$out/apps_$label.txt" | sort | uniq -c | tr '\n' ';')" | tee -a "$log"
  dvc queue remove --all >/dev/null 2>&1 || true
}
grid one_worker 'CUDA_VISIBLE_DEVICES=0 dvc queue start -j 1 </dev/null >/dev/null 2>&1'
grid worker_per_gpu 'for k in 0 1; do CUDA_VISIBLE_DEVICES=$k dvc queue start -j $((k + 1)) </dev/null >/dev/null 2>&1; sleep 5; done'
cat "$log"
