#!/usr/bin/env bash
# The whole study, `dvc repro`, on a GPU machine whose Python has torch (and triton) but no DVC, e.g. a
# container image. Before: copy the repository there with DVC and its dependencies as wheels in .whl/
# (built for that machine's Python) and MNIST's four .gz files in .mnist/. There:
#   bash bench/gpu_repro.sh [dvc repro args...]     -> ${OUT:-.}/study.tgz (dvc.lock + results/), repro.log
# Back in your clone: copy results/runs and results/metrics in, `dvc commit -f` the train stages, and
# run the analysis with requirements.txt's numpy and scipy (`dvc repro`): another numpy or scipy writes
# other bytes (tests/test_committed_results.py checks the committed ones).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site" PATH="$HOME/site/bin:$PATH" MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1
if [ ! -d .git ]; then  # DVC wants a git repo; the copy may come without one
  git init -q && git add -A >/dev/null && git -c user.name=gpu -c user.email=gpu@localhost commit -qm copy
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
dvc repro "$@" 2>&1 | tee "${OUT:-.}/repro.log"
echo "dvc repro took $(( $(date +%s) - start )) s"
tar czf "${OUT:-.}/study.tgz" dvc.lock results
