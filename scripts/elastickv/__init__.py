# SPDX-License-Identifier: Apache-2.0
"""ElasticKV harness library: paths, the ELASTICKV_* mirror, the numpy reference of the op, downloads,
log parsers, result files. Entry-point scripts under scripts/ put this folder's parent on sys.path."""
