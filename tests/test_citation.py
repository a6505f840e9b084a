# SPDX-License-Identifier: Apache-2.0
"""CITATION.cff is valid CFF 1.2.0 (schema from the Citation File Format project, shipped in tests/data, CC-BY-4.0),
and LICENSE names Apache-2.0 with the MIT licence of the files derived from llama.cpp."""

from __future__ import annotations

import json

import jsonschema
import yaml

from elastickv import paths


def test_citation_cff_is_valid():
    schema = json.loads((paths.ROOT / "tests" / "data" / "citation-file-format-1.2.0.schema.json").read_text())
    cff = yaml.safe_load((paths.ROOT / "CITATION.cff").read_text())
    # CFF dates are YAML dates; the schema checks the ISO string form
    cff = json.loads(json.dumps(cff, default=str))
    jsonschema.validate(cff, schema)


def test_citation_cff_schema_rejects_a_broken_file():
    schema = json.loads((paths.ROOT / "tests" / "data" / "citation-file-format-1.2.0.schema.json").read_text())
    cff = yaml.safe_load((paths.ROOT / "CITATION.cff").read_text())
    del cff["authors"]
    try:
        jsonschema.validate(json.loads(json.dumps(cff, default=str)), schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("a CFF file without authors was accepted")


def test_license_apache_with_mit_for_llamacpp_derived_files():
    text = (paths.ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
    assert "MIT" in text and "cuda_hook" in text
