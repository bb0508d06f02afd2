#!/usr/bin/env bash
# On a GPU machine: the CUDA-only tests, Newton-Schulz precision and speed (bench/ns_precision.py), the
# time per training step of every run of params.yaml at its own seed count (bench/profile_step.py), each
# divided by its physical floor (bench/floor.py), and the side-by-side speed against the sequential
# reference loop (bench/speed.py). Everything goes to ${OUT:-.}/gpu_check.log, the per-step lines to
# ${OUT:-.}/steps.txt. Needs torch (and triton) only, no DVC; MNIST from MNIST_MIRROR (default .mnist/).
#   bash bench/gpu_check.sh
set -uo pipefail
shopt -s globstar nullglob
export MNIST_MIRROR="${MNIST_MIRROR:-$PWD/.mnist}" PYTHONUNBUFFERED=1
out="${OUT:-.}"; log="$out/gpu_check.log"; steps="$out/steps.txt"; : > "$steps"
{
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
date -u
echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/**/test_optimizers.py tests/**/test_cms.py tests/**/test_train.py \
    tests/**/test_methods.py tests/**/test_nested_ssm.py -k "cuda or graph" 2>&1 | tail -15
echo "== Newton-Schulz precision and time"
python3 bench/ns_precision.py 2>&1 | tail -25
echo "== per-step time of every run at its own seed count (RESULT lines)"
python3 -c "from pmnist.config import load_params
for name, run in load_params()['runs'].items(): print(name, len(run['seeds']))" |
while read -r run seeds; do
  python3 bench/profile_step.py --run "$run" --seeds "$seeds" --no-profile 2>&1 | grep RESULT | tee -a "$steps"
done
python3 bench/floor.py --device "$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo h200 || echo h100)" \
    --results "$steps" | sed -n '/^measured/,$p'
echo "== side by side with the sequential loop (bench/speed.py)"
python3 bench/speed.py --seeds 10 --tasks 1 --epochs 1 2>&1 | tail -3
python3 bench/speed.py --seeds 1 --tasks 1 --epochs 1 2>&1 | tail -3
} 2>&1 | tee "$log"
