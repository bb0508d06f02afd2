# One command each: `make repro` (set up + run the study), `make test` (set up + run the tests).
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PY      := .venv/bin/python
VENV    := .venv/.installed

# A relative MNIST_MIRROR means relative to where it was set: make it absolute once, here, so the
# stages and the tests (which run elsewhere) see the same directory.
ifneq ($(strip $(MNIST_MIRROR)),)
  ifeq ($(findstring ://,$(MNIST_MIRROR)),)
    export MNIST_MIRROR := $(abspath $(MNIST_MIRROR))
  endif
endif
ifneq ($(strip $(FASHION_MNIST_MIRROR)),)
  ifeq ($(findstring ://,$(FASHION_MNIST_MIRROR)),)
    export FASHION_MNIST_MIRROR := $(abspath $(FASHION_MNIST_MIRROR))
  endif
endif
ifneq ($(strip $(CIFAR10_MIRROR)),)
  ifeq ($(findstring ://,$(CIFAR10_MIRROR)),)
    export CIFAR10_MIRROR := $(abspath $(CIFAR10_MIRROR))
  endif
endif

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
