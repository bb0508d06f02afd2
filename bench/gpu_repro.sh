#!/usr/bin/env bash
# Full-protocol `dvc repro` on a lent GPU machine whose image has torch but no DVC.
# Usage there (the repo copied in, DVC wheels in .whl/, MNIST .gz files in .mnist/):
#   bash bench/gpu_repro.sh [dvc repro args...]     -> $OUT/study.tgz (dvc.lock + results/)
# Bring back the train stages' results (results/runs, results/metrics), `dvc commit -f` them here, and
# rerun the analysis here (`dvc repro`): this image's numpy and scipy are not requirements.txt's.
# Preparation here: mkdir -p .whl .mnist; cp ../shared/device-wheels/*.whl .whl/; cp ../shared/mnist/* .mnist/
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
