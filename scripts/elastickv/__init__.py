# SPDX-License-Identifier: Apache-2.0
"""ElasticKV harness library: paths, the ELASTICKV_* mirror, the numpy reference of the op, downloads,
log parsers, result files. Installed editable by the Makefile's venv step (`pip install -e .`, pyproject.toml),
so scripts, tests and notebooks `import elastickv` as they are; only the set-up and GPU scripts, which run with a
bare python3 before any venv exists, put scripts/ on sys.path themselves."""
