#!/usr/bin/env bash
# On a lent GPU machine (torch in its image, no DVC): the CUDA-only tests, Newton-Schulz precision and
# speed, per-step times of every kind of run (bench/profile_step.py) and the side-by-side speed
# against the sequential reference loop (bench/speed.py). Everything goes to ${OUT:-.}/gpu_check.log.
# Preparation here: mkdir -p .whl .mnist; cp ../shared/device-wheels/*.whl .whl/; cp ../shared/mnist/* .mnist/
set -uo pipefail
export MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1
log="${OUT:-.}/gpu_check.log"
{
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
date -u
echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_optimizers.py tests/test_cms.py tests/test_train.py \
    tests/test_methods.py tests/test_nested_ssm.py -k "cuda or graph" 2>&1 | tail -15
echo "== Newton-Schulz precision and time"
python3 bench/ns_precision.py 2>&1 | tail -25
echo "== per-step time, 20 seeds (RESULT lines)"
step() { python3 bench/profile_step.py --seeds 20 --no-profile "$@" 2>&1 | grep RESULT; }
step --run baseline; step --run baseline --no-flat; step --run cms; step --run cms --no-flat
step --run muon; step --run muon --arg ns_dtype=float32; step --run m3; step --run m3 --arg ns_dtype=float32
step --run deep_momentum --steps 100; step --run deep_momentum --steps 100 --arg hidden_dim=16
step --run ewc; step --run si; step --run replay; step --run joint; step --run nested_ssm --steps 100
echo "== side by side with the sequential loop (bench/speed.py)"
python3 bench/speed.py --seeds 10 --tasks 1 --epochs 1 2>&1 | tail -3
python3 bench/speed.py --seeds 1 --tasks 1 --epochs 1 2>&1 | tail -3
} 2>&1 | tee "$log"
