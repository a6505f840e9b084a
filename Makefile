# SPDX-License-Identifier: Apache-2.0
# ElasticKV. `make run` and `make test` do all the set-up on a fresh machine (see README.md).

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CHUNKS     ?= 10
RUN_ARGS   ?=
TEST_ARGS  ?=

# what each job needs built; test-backend-ops takes the longest, so `make run` does not build it.
# The tests drive llama-cli and llama-server too (llama-cli is built on llama-server's code).
RUN_TARGETS  := llama-perplexity
TEST_TARGETS := llama-perplexity llama-completion llama-bench llama-cli llama-server test-backend-ops
ALL_TARGETS  := llama-perplexity llama-completion llama-bench llama-cli llama-server test-backend-ops

.PHONY: help run run-full test test-debug sanitize build build-test build-upstream build-cuda model cuda-check bench bench-op cross-isa bench-server clean distclean \
        figures tables paper paper-deps experiments gpu-pack

help:
	@echo "make run        build what is missing, fetch the default model, print the baseline/sweet/aggressive"
	@echo "                table with the q8_0 and q4_0 anchors on WikiText-2 (CHUNKS=$(CHUNKS); run-full: all)"
	@echo "make test       build the test targets (patched + unpatched llama.cpp) and run the test suite"
	@echo "make test-debug Debug CPU build (asserts on, -O0) and the hook's and op's tests on it (DEBUG_TESTS)"
	@echo "make sanitize   ASan + UBSan CPU build and the hook's end-to-end and server tests on it (SANITIZE_TESTS; no report"
	@echo "                allowed; not in CI: about two hours on 2 shared cores)"
	@echo "make build      CPU build of every tool (perplexity, completion, bench, cli, server, test-backend-ops)"
	@echo "make build-cuda CUDA build (CUDA_ARCH=90, FA_QUANTS='f16-f16;q8_0-q8_0;q4_0-q4_0;q8_0-f16')"
	@echo "make bench      the op's bandwidth against memcpy (bench-op), then the decode overhead (llama-bench, hook on/off)"
	@echo "make bench-server  llama-server under load, hook off then on (4 slots, 16 clients, 200 requests; minutes)"
	@echo "make bench-op   the op alone against a copy of the same bytes (test-backend-ops perf; a few minutes)"
	@echo "make cross-isa  re-run the reproduction test's entry with builds for AVX-512, AVX2, SSE 4.2: its tolerances"
	@echo "make cuda-check compile-only nvcc check of the CUDA kernel"
	@echo "make gpu-pack   what the standing GPU check carries (build/gpu-pack) and the run call (scripts/gpu/verify.sh)"
	@echo "make figures    every figure of the paper from results/ (no GPU, no run): paper/figures/"
	@echo "make paper      figures + generated tables + the PDF (paper/build/elastickv.pdf); installs TeX if missing"
	@echo "make experiments  re-run every experiment of the paper on this machine (hours on 2 CPU cores)"

# the venv: requirements.txt, then the harness package itself, editable (`import elastickv` from anywhere)
$(VENV)/.stamp: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
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

# the Debug build runs the op's tests and the hook's end-to-end tests (slow at -O0: a subset by default)
DEBUG_TESTS ?= tests/test_op_reference.py tests/test_cuda_host.py tests/test_hook_sparsity.py tests/test_hook_errors.py
test-debug: $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh --debug -j $(JOBS) llama-perplexity llama-completion
	EKV_BUILD_VARIANT=cpu-debug $(PY) -m pytest $(DEBUG_TESTS) $(TEST_ARGS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the patched tools, and the hook's end-to-end tests on it.
# Sanitizer reports go to files (build/sanitize/), so that one raised in a run a test expects to fail is not missed:
# the target fails if any report was written.
# test_hook_identity.py compares with the unpatched tree, built sanitized too (the same flags: bit-identical logits).
SANITIZE_TESTS ?= tests/test_hook_errors.py tests/test_hook_layouts.py tests/test_hook_identity.py \
                  tests/test_hook_sparsity.py tests/test_hook_sequences.py tests/test_fuzz_env.py \
                  tests/test_policies.py tests/test_server.py
SANITIZE_DIR   := build/sanitize
sanitize: $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh --sanitize -j $(JOBS) llama-perplexity llama-completion llama-server
	scripts/setup/build_llamacpp.sh --upstream --sanitize -j $(JOBS) llama-perplexity
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	EKV_BUILD_VARIANT=cpu-sanitize ASAN_OPTIONS=log_path=$(CURDIR)/$(SANITIZE_DIR)/asan \
	    UBSAN_OPTIONS=log_path=$(CURDIR)/$(SANITIZE_DIR)/ubsan:print_stacktrace=1 $(PY) -m pytest $(SANITIZE_TESTS) $(TEST_ARGS)
	@if ls $(SANITIZE_DIR)/* >/dev/null 2>&1; then echo "sanitizer reports:"; ls $(SANITIZE_DIR); exit 1; \
	 else echo "sanitize: no AddressSanitizer or UndefinedBehaviorSanitizer report"; fi

cuda-check: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) ggml-base
	$(PY) scripts/setup/check_cuda_compile.py --arch $(CUDA_ARCH)

# the standing GPU check: the packed tree and wheels in build/gpu-pack, then `bash scripts/gpu/verify.sh` there
gpu-pack: $(VENV)/.stamp
	$(PY) scripts/gpu/pack.py

bench: bench-op $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh -j $(JOBS) llama-bench
	$(PY) scripts/bench/decode_overhead.py

bench-server: $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh -j $(JOBS) llama-server
	$(PY) scripts/bench/server_load.py --force

bench-op: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) test-backend-ops
	$(PY) scripts/bench/op_bandwidth.py --force

# the tolerance of tests/test_reproduce.py: builds for fixed instruction sets, run here (tests/tolerances.py)
ISAS ?= avx512 avx2 sse42
cross-isa: $(VENV)/.stamp model
	scripts/setup/build_llamacpp.sh -j $(JOBS) llama-perplexity
	@for isa in $(ISAS); do scripts/setup/build_llamacpp.sh --isa $$isa -j $(JOBS) llama-perplexity || exit 1; done
	$(PY) scripts/bench/cross_isa.py

# ---- the paper: everything below reads results/ only ----
FIG_SCRIPTS := $(sort $(wildcard scripts/plot/fig*.py))
TAB_SCRIPTS := $(sort $(wildcard scripts/plot/tab*.py)) scripts/plot/inline_numbers.py
TEX_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended poppler-utils
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

figures: $(VENV)/.stamp
	@for s in $(FIG_SCRIPTS); do $(PY) $$s || exit 1; done

tables: $(VENV)/.stamp
	@for s in $(TAB_SCRIPTS); do $(PY) $$s || exit 1; done

# TeX and poppler (the rendered-page check) from Debian's packages (about 150 MB); nothing is installed when both are there
paper-deps:
	@{ command -v pdflatex && command -v pdftoppm; } >/dev/null 2>&1 || { \
	  echo "installing TeX from Debian: $(TEX_PACKAGES)"; \
	  $(SUDO) apt-get install -y --no-install-recommends $(TEX_PACKAGES) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends $(TEX_PACKAGES); }; }

paper: figures tables paper-deps
	mkdir -p paper/build
	cd paper && for pass in 1 2; do \
	  pdflatex -interaction=nonstopmode -halt-on-error -output-directory=build elastickv.tex >build/pdflatex.log 2>&1 \
	  || { tail -40 build/pdflatex.log; exit 1; }; done
	@grep -q "undefined" paper/build/elastickv.log && { grep -n "undefined" paper/build/elastickv.log; exit 1; } || true
	$(PY) scripts/plot/check_pdf.py
	@echo "paper: paper/build/elastickv.pdf"

# every experiment of the paper, in the order the analyses need them (resumes; see results/MANIFEST.md)
experiments: $(VENV)/.stamp
	scripts/setup/build_llamacpp.sh -j $(JOBS) llama-perplexity llama-completion llama-bench
	$(PY) scripts/setup/fetch_model.py smollm2-135m
	$(PY) scripts/setup/fetch_model.py qwen2.5-coder-0.5b
	scripts/eval/run_ppl.sh all
	$(PY) scripts/analysis/f4_threshold_ablation.py
	$(PY) scripts/eval/f5_niah.py
	scripts/eval/throughput_bench.sh
	$(PY) scripts/analysis/simulate_attention_haze.py
	$(PY) scripts/analysis/f2_spr_real_kv.py
	$(PY) scripts/analysis/tau_band_energy.py
	$(PY) scripts/analysis/eviction_replay.py
	$(PY) scripts/analysis/f1_deep_analysis.py
	$(PY) scripts/analysis/f1_ppl_analysis.py
	$(PY) scripts/analysis/f7_compression_proof.py
	$(PY) scripts/eval/head_to_head.py
	$(PY) scripts/eval/routing_sweep.py
	$(PY) scripts/eval/f5_niah.py --config table18_niah_policies
	$(PY) scripts/eval/real_memory.py
	$(PY) scripts/eval/f5_niah.py --config table20_niah_real_memory

clean:
	rm -rf build/run build/cache build/cuda-check build/gpu-pack build/gpu-work build/gpu-dry reports paper/build paper/generated

distclean: clean
	rm -rf build models $(VENV)
