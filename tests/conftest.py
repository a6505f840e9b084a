# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures. Tests run real llama.cpp binaries of build/ on the default model (make test builds them);
a missing build is an error, not a skip, so CI cannot pass without exercising the hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))



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
