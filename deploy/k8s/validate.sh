#!/usr/bin/env bash
# Renders every kustomization under deploy/k8s with `kubectl kustomize` (no cluster needed)
# and validates the output offline for the Kubernetes version the manifests target, with
# PyPI's kubernetes-validate (strict: unknown fields are errors). It knows no CRDs, so KEDA's
# ScaledObjects are checked here against the part of KEDA's CRD schema they use, and
# against the rendered farm: each scales a worker Deployment of its pool, at the
# coordinator's Service.
#
#   deploy/k8s/validate.sh            (KUBERNETES_VERSION=1.30.0 by default)
set -euo pipefail
cd "$(dirname "$0")"
version="${KUBERNETES_VERSION:-1.30.0}"

if ! command -v kubectl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
    python3 -m pip install --quiet kubernetes-validate
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for dir in base overlays/*; do
    name=$(echo "$dir" | tr / -)
    # Current kubectl warns that bases/patchesStrategicMerge/commonLabels are deprecated:
    # they are used on purpose (Debian's kubectl 1.20 knows no other), so only errors show.
    if ! kubectl kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
        echo "FAIL $dir: kubectl kustomize"; grep -v '^# Warning' "$out/$name.err" || true
        status=1; continue
    fi
    # kubernetes-validate: one line per resource; the ScaledObjects' "no schema" warning
    # is expected (checked below) and anything else is shown.
    if ! kubernetes-validate --strict --quiet -k "$version" "$out/$name.yaml" >"$out/$name.log" 2>&1; then
        echo "FAIL $dir: kubernetes-validate $version"; cat "$out/$name.log"; status=1; continue
    fi
    grep -v "Couldn't find schema for kind ScaledObject" "$out/$name.log" || true
    if ! python3 - "$out/$name.yaml" <<'PY'
"""KEDA ScaledObjects (keda.sh/v1alpha1) in one rendered file: the CRD's schema for the fields
used, then the references: the target Deployment, its pool, the coordinator's address."""
import sys

import jsonschema
import yaml

INT = {"type": "integer", "minimum": 0}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": INT,
                "cooldownPeriod": INT,
                "initialCooldownPeriod": INT,
                "idleReplicaCount": INT,
                "minReplicaCount": INT,
                "maxReplicaCount": INT,
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}

path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []
deployments = {
    d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"
}
services = {
    (d["metadata"]["name"], d["metadata"]["namespace"]): d
    for d in docs
    if d["kind"] == "Service"
}
scaled = [d for d in docs if d["kind"] == "ScaledObject"]
# Every resource in the farm's namespace (an overlay's own resources get it only from the
# overlay's kustomization).
for d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "stylefarm":
        errors.append(f"{d['kind']} {d['metadata'].get('name')}: not in the namespace stylefarm")
for so in scaled:
    name = so.get("metadata", {}).get("name", "?")
    try:
        jsonschema.validate(so, SCALED_OBJECT)
    except jsonschema.ValidationError as e:
        errors.append(f"ScaledObject {name}: {e.message} at {list(e.absolute_path)}")
        continue
    spec = so["spec"]
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append(f"ScaledObject {name}: minReplicaCount above maxReplicaCount")
    target = deployments.get(spec["scaleTargetRef"]["name"])
    if target is None or spec["scaleTargetRef"].get("kind", "Deployment") != "Deployment":
        errors.append(f"ScaledObject {name}: no Deployment {spec['scaleTargetRef']['name']}")
        continue
    if "replicas" in target["spec"]:
        errors.append(f"ScaledObject {name}: Deployment {target['metadata']['name']} pins replicas")
    pool = target["spec"]["template"]["metadata"]["labels"].get("stylefarm.io/pool")
    for t in spec["triggers"]:
        meta = t["metadata"]
        if t["type"] != "external":
            errors.append(f"ScaledObject {name}: trigger {t['type']} is not the external scaler")
            continue
        if meta.get("pool") not in ("cpu", "cuda") or meta.get("pool") != pool:
            errors.append(f"ScaledObject {name}: pool {meta.get('pool')!r} is not its workers' pool {pool!r}")
        host, _, port = meta.get("scalerAddress", "").rpartition(":")
        parts = host.split(".")
        svc = services.get((parts[0], parts[1] if len(parts) > 1 else so["metadata"]["namespace"]))
        if svc is None or int(port or 0) not in [p["port"] for p in svc["spec"]["ports"] if p.get("name") == "grpc"]:
            errors.append(f"ScaledObject {name}: scalerAddress {meta.get('scalerAddress')!r} is not the coordinator's gRPC Service port")
for e in errors:
    print("FAIL", e)
if scaled and not errors:
    print(f"{len(scaled)} ScaledObject(s) pass the KEDA schema and point at their pools")
sys.exit(1 if errors else 0)
PY
    then status=1; continue; fi
    echo "ok $dir ($(grep -c '^kind:' "$out/$name.yaml") resources, Kubernetes $version)"
done
exit $status
