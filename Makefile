# SPDX-License-Identifier: Apache-2.0
# ElasticKV. `make run` and `make test` do all the set-up on a fresh machine (see README.md).

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CHUNKS     ?= 10
RUN_ARGS   ?=
TEST_ARGS  ?=

# what each job needs built; test-backend-ops takes the longest, so `make run` does not build it
RUN_TARGETS  := llama-perplexity
TEST_TARGETS := llama-perplexity llama-completion llama-bench test-backend-ops
ALL_TARGETS  := llama-perplexity llama-completion llama-bench llama-cli llama-server test-backend-ops

.PHONY: help run run-full test build build-test build-upstream build-cuda model cuda-check bench clean distclean

help:
	@echo "make run        build what is missing, fetch the default model, print the baseline/sweet/aggressive"
	@echo "                table with the q8_0 and q4_0 anchors on WikiText-2 (CHUNKS=$(CHUNKS); run-full: all)"
	@echo "make test       build the test targets (patched + unpatched llama.cpp) and run the test suite"
	@echo "make build      CPU build of every tool (perplexity, completion, bench, cli, server, test-backend-ops)"
	@echo "make build-cuda CUDA build (CUDA_ARCH=90, FA_QUANTS='f16-f16;q8_0-q8_0;q4_0-q4_0;q8_0-f16')"
	@echo "make bench      decode-overhead benchmark (llama-bench, hook on vs off)"
	@echo "make cuda-check compile-only nvcc check of the CUDA kernel"

$(VENV)/.stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

model: $(VENV)/.stamp
	$(PY) scripts/setup/fetch_model.py

build: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) $(ALL_TARGETS)

build-test: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) $(TEST_TARGETS)
	scripts/setup/build_llamacpp.sh --upstream -j $(JOBS) llama-perplexity

build-upstream: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh --upstream -j $(JOBS) llama-perplexity

CUDA_ARCH ?= 90
FA_QUANTS ?= f16-f16;q8_0-q8_0;q4_0-q4_0;q8_0-f16
build-cuda: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh --cuda --cuda-arch $(CUDA_ARCH) --fa-quants "$(FA_QUANTS)" -j $(JOBS) $(ALL_TARGETS)

run: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) $(RUN_TARGETS)
	$(PY) scripts/setup/fetch_model.py
	$(PY) scripts/eval/quickstart.py --chunks $(CHUNKS) $(RUN_ARGS)

run-full: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) $(RUN_TARGETS)
	$(PY) scripts/setup/fetch_model.py
	$(PY) scripts/eval/quickstart.py --full $(RUN_ARGS)

test: build-test model
	$(PY) -m pytest $(TEST_ARGS)

cuda-check: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) ggml-base
	$(PY) scripts/setup/check_cuda_compile.py --arch $(CUDA_ARCH)

bench: $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh -j $(JOBS) llama-bench
	$(PY) scripts/bench/decode_overhead.py

clean:
	rm -rf build/run build/cache build/cuda-check reports

distclean: clean
	rm -rf build models $(VENV)
