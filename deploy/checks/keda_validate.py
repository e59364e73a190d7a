"""Validates the KEDA resources (keda.sh/*) of rendered manifests against KEDA's CRD schema.

kubernetes-validate knows only the built-in kinds and merely warns on custom resources, so the
KEDA kinds get their own check. The schema comes from PyPI `cloudcoil-models-keda` (models
generated from KEDA's CRDs, pinned in deploy/checks/requirements.txt), exported as JSON Schema
and made strict: every object with declared properties rejects undeclared ones, as the API server
does with field validation "Strict". Types and required fields are checked as JSON Schema does,
with no coercion ("4" is not an integer, 4 is not a string).

Usage: python keda_validate.py --schema-cache DIR FILE.yaml...
Exit 0 when every KEDA resource is valid and at least one ScaledObject was seen; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

KINDS = ("ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication")


def strict(node: object) -> object:
    """Returns the schema with `additionalProperties: false` on every object with properties."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def load_schemas(cache: Path) -> dict[str, dict]:
    """The strict schema of each KEDA kind, exported once into `cache` (importing the models
    takes seconds; reading the JSON does not)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [k for k in KINDS if not (cache / f"{k}.json").exists()]
    if missing:
        from cloudcoil.models.keda import v1alpha1  # slow: only when the cache is cold

        for kind in missing:
            model = getattr(v1alpha1, kind)
            schema = strict(model.model_json_schema(by_alias=True, mode="validation"))
            tmp = cache / f"{kind}.json.tmp"
            tmp.write_text(json.dumps(schema, sort_keys=True))
            tmp.rename(cache / f"{kind}.json")
    return {k: json.loads((cache / f"{k}.json").read_text()) for k in KINDS}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema-cache", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    schemas = load_schemas(args.schema_cache)
    failures = 0
    scaled_objects = 0
    for path in args.files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith("keda.sh/"):
                continue
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name", "?")
            where = f"{path}: {kind}/{name}"
            if doc.get("apiVersion") != "keda.sh/v1alpha1" or kind not in schemas:
                print(f"FAIL {where}: unknown KEDA kind {doc.get('apiVersion')} {kind}")
                failures += 1
                continue
            errors = sorted(
                Draft202012Validator(schemas[kind]).iter_errors(doc),
                key=lambda e: list(map(str, e.absolute_path)),
            )
            for err in errors:
                field = "/" + "/".join(map(str, err.absolute_path))
                print(f"FAIL {where}: {field}: {err.message}")
            if errors:
                failures += 1
            else:
                print(f"ok   {where} (keda.sh/v1alpha1 schema, strict)")
            scaled_objects += kind == "ScaledObject"
    if scaled_objects == 0:
        print("FAIL no ScaledObject found: nothing was validated")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
