# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures. Tests run real llama.cpp binaries of build/ on the default model (make test builds them);
a missing build is an error, not a skip, so CI cannot pass without exercising the hook."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' own helpers (llama_run, ggml_op, archive_guard)

# the harness package comes from the venv (pip install -e ., the Makefile's venv step), and from this checkout
try:
    import elastickv.paths
except ModuleNotFoundError:
    raise SystemExit("tests: the harness package elastickv is not installed in this Python; run `make test` "
                     "(its venv step runs pip install -e .) or `pip install -e .` here") from None
if elastickv.paths.ROOT != ROOT:
    raise SystemExit(f"tests: elastickv is installed from {elastickv.paths.ROOT}, not from this checkout ({ROOT}); "
                     "run `pip install --no-build-isolation --no-deps -e .` here")

# the session fails if any test wrote to, changed or removed a file of results/ (tests/archive_guard.py)
from archive_guard import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary  # noqa: E402,F401


@pytest.fixture(scope="session")
def ggml_cpu():
    from ggml_op import GgmlCpu

    return GgmlCpu()


@pytest.fixture(scope="session")
def model_path() -> Path:
    from elastickv import models

    return models.fetch()


@pytest.fixture(scope="session")
def llama(model_path):
    """Runs the patched (or unpatched) llama.cpp tools on the default model."""
    from llama_run import Llama

    return Llama(model_path)


@pytest.fixture()
def tmp_rel(request):
    """A scratch folder inside the repository, one per test module (result files record paths relative to
    the repository, so they cannot live in pytest's tmp_path)."""
    from elastickv import paths

    d = paths.BUILD / "test-tmp" / request.module.__name__.rsplit(".", 1)[-1]
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)
