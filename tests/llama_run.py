# SPDX-License-Identifier: Apache-2.0
"""Helpers to run the real llama.cpp tools of build/ on the default model in tests (no mocks)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from elastickv import paths, tools

DATA = paths.relative(paths.WIKITEXT_TEST)


@dataclass
class Result:
    rc: int
    log: str


class Llama:
    def __init__(self, model_path: Path) -> None:
        self.model = str(model_path)

    def tool(self, name: str, args: list[str], env: dict[str, str] | None = None, upstream: bool = False,
             timeout: float = 600) -> Result:
        tree = paths.UPSTREAM_SRC if upstream else paths.LLAMA_SRC
        binary = paths.binary(name, tree=tree)
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is not built: run `make build-test`")
        proc = subprocess.run([str(binary), "-m", self.model, *args], cwd=paths.ROOT, env=tools.clean_env(env),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout)
        return Result(proc.returncode, proc.stdout)

    def perplexity(self, args: list[str], env: dict[str, str] | None = None, upstream: bool = False,
                   ctx: int = 512, batch: int = 64, chunks: int = 2) -> Result:
        """llama-perplexity on wiki.test.raw with -b = -ub = batch (SPEC §2), 2 threads."""
        base = ["-c", str(ctx), "-b", str(batch), "-ub", str(batch), "--chunks", str(chunks), "-t", "2", "-lv", "4"]
        if "--kl-divergence" not in args:
            base += ["-f", DATA]
        return self.tool("llama-perplexity", base + args, env, upstream)
