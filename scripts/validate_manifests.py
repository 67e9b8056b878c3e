"""Validate rendered Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate, strict).

    python scripts/validate_manifests.py -k 1.30.0 -k 1.37.0 rendered/*.yaml

Strict: a field the schema does not know is an error (a typo in the chart fails here, not in the cluster).
A kind with no schema is an error too, except the custom resources named in ``CUSTOM_RESOURCE_GROUPS``
(CRDs that the Kubernetes schemas cannot know): those are listed as skipped. Run with the lint venv's
Python (scripts/lint-deploy.sh), where kubernetes-validate is installed.
"""

from __future__ import annotations

import argparse
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# API groups of custom resources the chart may render; their schemas live with their operators.
CUSTOM_RESOURCE_GROUPS = {"monitoring.coreos.com"}  # the Prometheus Operator's ServiceMonitor


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_file(path: str, versions: list[str]) -> tuple[int, int, list[str]]:
    """(documents validated, CRDs skipped, error lines) for one file of YAML documents."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    validated, skipped, errors = 0, 0, []
    for doc in docs:
        group = doc.get("apiVersion", "").rpartition("/")[0]
        if group in CUSTOM_RESOURCE_GROUPS:
            sys.stdout.write(f"  skipped {name_of(doc)} ({doc['apiVersion']}: a CRD, not in the Kubernetes schemas)\n")
            skipped += 1
            continue
        validated += 1
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                errors.append(f"{path}: {name_of(doc)} against {version}: {where}: {exc.message}")
            except SchemaNotFoundError as exc:
                errors.append(f"{path}: {name_of(doc)}: {exc.message}")
    return validated, skipped, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", required=True, dest="versions")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = False
    for path in args.files:
        validated, skipped, errors = validate_file(path, args.versions)
        for line in errors:
            sys.stderr.write(f"ERROR {line}\n")
        failed |= bool(errors) or validated == 0
        verdict = f"{len(errors)} error(s)" if errors else "all valid"
        sys.stdout.write(
            f"{path}: {validated} manifests against Kubernetes {', '.join(args.versions)} (strict): {verdict}; "
            f"{skipped} CRD(s) skipped\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
