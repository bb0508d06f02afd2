# One command each: `make repro` (set up + run the study), `make test` (set up + run the tests).
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PY      := .venv/bin/python
VENV    := .venv/.installed

# A relative mirror path (MNIST_MIRROR, FASHION_MNIST_MIRROR, CIFAR10_MIRROR; a URL is left as it is)
# means relative to where it was set: make it absolute once, here, so the stages and the tests (which run
# elsewhere) see the same directory.
MIRRORS := MNIST_MIRROR FASHION_MNIST_MIRROR CIFAR10_MIRROR
$(foreach m,$(MIRRORS),$(if $(strip $($(m))),$(if $(findstring ://,$($(m))),,$(eval export $(m) := $(abspath $($(m)))))))

.PHONY: setup repro literature sequence test smoke bench

$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt
	touch $(VENV)

setup: $(VENV)

repro: $(VENV)
	dvc repro
	@dvc status dvc.yaml | grep -q "up to date" && echo "make repro: the study is up to date: results/report.md" \
	  || echo "make repro: stages are still changed (dvc status dvc.yaml lists them)"
	@dvc status literature/dvc.yaml | grep -q "up to date" \
	  || echo "make repro: the literature set (published settings) is not reproduced here: make literature"

# The literature set (published settings reproduced): its own pipeline, literature/dvc.yaml.
literature: $(VENV)
	dvc repro literature/dvc.yaml

# The dataset-sequence study (the design note's claims): its own pipeline, sequence/dvc.yaml.
sequence: $(VENV)
	dvc repro sequence/dvc.yaml

test: $(VENV)
	$(PY) -m pytest -q tests

smoke: $(VENV)
	$(PY) tests/smoke.py

bench: $(VENV)
	$(PY) bench/speed.py $(ARGS)
