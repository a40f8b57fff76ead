"""Validates rendered Kubernetes manifests (multi-document YAML files) offline.

Core kinds: the Kubernetes API's JSON schemas bundled by kubernetes-validate, in strict mode
(unknown fields are errors), for each --k8s version. ServiceMonitor: the prometheus-operator
CRD's schema as generated into cloudcoil's pydantic models, plus a check that no field of the
input was dropped as unknown. Any other kind is an error. Exit 1 on any problem.
"""
import argparse
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError


def dropped_fields(given, kept, path=""):
    """Paths in `given` that the model did not keep: fields the schema does not know."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            sub = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(sub)
            else:
                out.extend(dropped_fields(value, kept[key], sub))
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (g, k) in enumerate(zip(given, kept)) for p in dropped_fields(g, k, f"{path}[{i}]")]
    return []


def check_crd(doc):
    from cloudcoil.models.prometheus_operator import v1
    model = {("monitoring.coreos.com/v1", "ServiceMonitor"): v1.ServiceMonitor}.get(
        (doc.get("apiVersion"), doc.get("kind")))
    if model is None:
        return [f"no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    try:
        kept = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    except Exception as e:  # pydantic.ValidationError: every problem with its path
        return [str(e)]
    return [f"{p}: unknown field" for p in dropped_fields(doc, kept)]


def check_core(doc, versions):
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            problems.append(f"k8s {version}: {where}: {e.message}")
        except SchemaNotFoundError as e:
            problems.append(e.message)
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = False
    for name in args.files:
        with open(name) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"FAIL {name}: no resources")
            failed = True
        for doc in docs:
            what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            problems = check_crd(doc) if doc.get("kind") == "ServiceMonitor" else check_core(doc, args.k8s)
            for p in problems:
                print(f"FAIL {name}: {what}: {p}")
            failed |= bool(problems)
            if not problems:
                print(f"ok   {name}: {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
