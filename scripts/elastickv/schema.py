# SPDX-License-Identifier: Apache-2.0
"""The validator of result files: run records, aggregates and the intermediate files of results/SCHEMA.md.

Owns how the JSON schemas are loaded and what their keywords mean. The schemas themselves are
``run.schema.json`` and ``aggregate.schema.json`` beside this file (the envelopes) and the files of
``schemas/`` (one per record kind, per aggregate script and per intermediate file, plus ``common``), tied
together by ``$ref`` through a registry of their ``$id``s. Checked with JSON Schema 2020-12 (jsonschema) and
these project rules, which need nothing beyond requirements.txt:

* ``"type": "number"`` means a *finite* number: NaN and ±Infinity (which Python's json writes and reads as
  the non-standard literals NaN / Infinity) are not numbers here. ``"type": "integer"`` means an int, not a
  float such as 3.0 and not a bool.
* keyword ``"isNaN": true``: the value is a NaN. A metric that is documented to be undefined in some runs
  says so with ``{"anyOf": [{"type": "number", ...}, {"isNaN": true}]}``; nowhere else is NaN accepted.
* keyword ``"finite": true``: no NaN or ±Infinity anywhere below this point (for free-form parts such as
  settings and configs, whose numbers are not described one by one).
* ``"format": "date-time"`` is enforced: RFC 3339 (``YYYY-MM-DDTHH:MM:SS[.frac]`` and a timezone, ``Z`` or
  ``±HH:MM``), a real calendar date and time. jsonschema's own checker only does this when the optional
  package rfc3339-validator is installed; this one is always on.

The files of ``schemas/`` carry no ``$schema``: jsonschema validates a ``$ref``'d document that names one with
its stock validator class, which would drop these rules below the envelope.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import re
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
SCHEMA_FILES = [HERE / "run.schema.json", HERE / "aggregate.schema.json", *sorted((HERE / "schemas").glob("*.json"))]

#: the schema of each kind of result file (by $id)
RECORD = "elastickv/run.schema.json"
AGGREGATE = "elastickv/aggregate.schema.json"
QUICKSTART_TABLE = "elastickv/schemas/intermediate.quickstart_table.schema.json"
THROUGHPUT_RUN = "elastickv/schemas/intermediate.throughput_run.schema.json"
GPU_SUMMARY = "elastickv/schemas/intermediate.gpu_summary.schema.json"
GPU_HOOK_AGREEMENT = "elastickv/schemas/intermediate.gpu_hook_agreement.schema.json"

_DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def is_date_time(value: object) -> bool:
    """RFC 3339 date-time with a timezone (``2026-11-22T20:12:28+00:00``, ``...Z``); non-strings pass (the
    ``type`` keyword judges those)."""
    if not isinstance(value, str):
        return True
    m = _DATE_TIME.match(value)
    if not m:
        return False
    date, time, _, zone = m.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:  # the fraction is left out: Python 3.10's fromisoformat takes only 3 or 6 digits
        parsed = dt.datetime.fromisoformat(f"{date}T{time}{zone}")
    except ValueError:
        return False
    return parsed.tzinfo is not None


def _finite_number(_checker, x: object) -> bool:
    """A finite real number (numpy scalars included: records are validated before they are written)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    return isinstance(x, numbers.Integral) or math.isfinite(x)


def _strict_integer(_checker, x: object) -> bool:
    """An integer type, not a float with an integral value (3.0) and not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _non_finite(obj: object, path: tuple = ()):
    """(path, value) of every NaN / ±Infinity inside ``obj``."""
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral) and not math.isfinite(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _non_finite(v, path + (i,))


@lru_cache(maxsize=1)
def _classes():
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT202012

    def is_nan(validator, wanted, instance, schema):
        if wanted and not (isinstance(instance, float) and math.isnan(instance)):
            yield jsonschema.ValidationError(f"{instance!r} is not NaN")

    def finite(validator, wanted, instance, schema):
        if not wanted:
            return
        for path, value in _non_finite(instance):
            where = "/".join(str(p) for p in path) or "the value"
            yield jsonschema.ValidationError(f"{value!r} at {where}: no NaN or infinity is allowed here")

    base = jsonschema.Draft202012Validator
    types = base.TYPE_CHECKER.redefine_many({"number": _finite_number, "integer": _strict_integer})
    cls = jsonschema.validators.extend(base, validators={"isNaN": is_nan, "finite": finite}, type_checker=types)
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date-time")(is_date_time)
    schemas = [json.loads(p.read_text()) for p in SCHEMA_FILES]
    registry = referencing.Registry().with_resources((s["$id"], DRAFT202012.create_resource(s)) for s in schemas)
    return cls, formats, registry, {s["$id"]: s for s in schemas}


@lru_cache(maxsize=None)
def validator(schema_id: str):
    """The validator of one schema (by ``$id``), with the project's keywords, types and formats."""
    cls, formats, registry, schemas = _classes()
    if schema_id not in schemas:
        raise KeyError(f"no schema with $id {schema_id!r} (known: {', '.join(sorted(schemas))})")
    return cls(schemas[schema_id], registry=registry, format_checker=formats)


def validate(obj: object, schema_id: str) -> None:
    """Raises jsonschema.ValidationError (the most relevant error) if ``obj`` does not follow the schema."""
    import jsonschema

    err = jsonschema.exceptions.best_match(validator(schema_id).iter_errors(obj))
    if err is not None:
        raise err


def first_error(obj: object, schema_id: str) -> str | None:
    """The first violation found (``path: message``), None when ``obj`` is valid; stops at the first."""
    e = next(iter(validator(schema_id).iter_errors(obj)), None)
    return None if e is None else f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"


def errors(obj: object, schema_id: str) -> list[str]:
    """Every violation, as ``path: message`` lines (empty when ``obj`` is valid)."""
    out = []
    for e in validator(schema_id).iter_errors(obj):
        out.append(f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}")
    return sorted(out)
