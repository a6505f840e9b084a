# SPDX-License-Identifier: Apache-2.0
"""Experiment configs: defaults < configs/experiments/<name>.yaml < command line.

Every script that makes a table takes ``--config`` (default: its own YAML) and ``--set key=value`` (repeatable,
dotted keys, values parsed as YAML), so ``--set models=[smollm2-135m] --set chunks=3`` reruns a subset. The
resolved config, with its ``version``, is written into every aggregate result, and a result written with a
different resolved config is not overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from . import paths


class ConfigError(ValueError):
    """A config file or an override that cannot be used; the message says what is accepted."""


def experiment_path(name: str) -> Path:
    return paths.CONFIGS / "experiments" / f"{name}.yaml"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set(cfg: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE (e.g. chunks=3 or models=[smollm2-135m])")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({e})") from e
    node = cfg
    parts = key.strip().split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section of the config")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"--set {key}: unknown key; known here: {', '.join(sorted(node))}")
    node[parts[-1]] = value


def load(name_or_path: str | Path, defaults: dict, overrides: list[str] | None = None) -> dict:
    """The resolved config: ``defaults`` < the YAML file < ``overrides`` (``key=value`` strings)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = experiment_path(str(name_or_path))
    if not path.exists():
        raise ConfigError(f"no config file {paths.relative(path)}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or "version" not in data:
        raise ConfigError(f"{paths.relative(path)}: a config is a mapping with a `version` key")
    unknown = set(data) - set(defaults) - {"version", "description"}
    if unknown:
        raise ConfigError(f"{paths.relative(path)}: unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
    cfg = _merge(defaults, data)
    for a in overrides or []:
        _set(cfg, a)
    cfg["config_file"] = paths.relative(path)
    return cfg


def add_arguments(ap: argparse.ArgumentParser, name: str) -> None:
    ap.add_argument("--config", default=name,
                    help=f"experiment config: a name under configs/experiments/ or a path (default: {name})")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value; dotted keys for sections); repeatable")
    ap.add_argument("--force", action="store_true",
                    help="replace results written with other settings (otherwise they are refused, never overwritten)")
