#!/usr/bin/env bash
# The validation grid of README "Choosing hyperparameters", run as DVC queued experiments on one GPU
# machine (torch installed; DVC's wheels in .whl/, MNIST's .gz files in .mnist/). Each line of GRID_FILE
# holds the arguments of one `dvc exp run --queue` (e.g. `-S 'runs.cms.lr=5e-5,1e-4' train@cms`); every experiment gets
# the tuning protocol: validation split, tuning seeds, the full number of epochs of params.yaml.
#   bash tuning/tune.sh GRID_FILE [WORKERS]   -> ${OUT:-.}/exps.json (`dvc exp show --json`), tune.log
# Then, in your clone: python -m tuning.select --exps exps.json <runs> --write
set -euo pipefail
grid="$1"; workers="${2:-4}"; out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site" PATH="$HOME/site/bin:$PATH" MNIST_MIRROR="$PWD/.mnist" PYTHONUNBUFFERED=1
if [ ! -d .git ]; then  # DVC wants a git repo; the copy may come without one
  git init -q && git add -A >/dev/null && git -c user.name=gpu -c user.email=gpu@localhost commit -qm copy
fi
git config user.name gpu; git config user.email gpu@localhost
TUNING=(-S protocol.seed=1000 -S protocol.n_seeds=10 -S train.eval_split=validation)
while read -r line; do
  [ -z "$line" ] || [ "${line:0:1}" = "#" ] && continue
  eval "dvc exp run --queue ${TUNING[*]} $line"
done < "$grid"
start=$(date +%s)
# Workers detach: give them no handle on this script's output, or a caller piping it waits for them.
dvc queue start -j "$workers" </dev/null >/dev/null 2>&1
while true; do  # (not `dvc queue status | grep -q`: with pipefail, grep's early exit ends the loop)
  status=$(dvc queue status)
  grep -qE "Queued|Running" <<<"$status" || break
  if [ $(( $(date +%s) - start )) -gt "${TUNE_DEADLINE_S:-100000}" ]; then echo "deadline: reporting what finished"; break; fi
  sleep 10
done
echo "grid took $(( $(date +%s) - start )) s with $workers workers"
dvc queue status | tee "$out/tune.log"
for name in $(dvc queue status | awk '$NF=="Failed"{print $1}'); do dvc queue logs "$name" | tail -20; done
dvc exp show --json > "$out/exps.json"
