"""Trim the JobSet CRD to the vendored schema: ``python trim_jobset_crd.py CRD.yaml TAG COMMIT > jobset-v1alpha2.json``.

Not run by the tests (they read the JSON it wrote); kept so the vendored file can be refreshed.
"""

from __future__ import annotations

import json
import sys

import yaml


def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key, value in node.items():
            if key != "enum":
                strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def main(path: str, tag: str, commit: str) -> None:
    crd = yaml.safe_load(open(path))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    spec["replicatedJobs"]["items"]["properties"]["template"]["properties"]["spec"] = {
        "type": "object",
        "description": "A batch/v1 JobSpec: validated separately against the Kubernetes schema (kubernetes-validate)."}
    if "volumeClaimPolicies" in spec:
        spec["volumeClaimPolicies"] = {"type": "array", "description": "not used by flatland (trimmed)"}
    schema["properties"].pop("status", None)
    strict(schema)
    comment = (f"JobSet v1alpha2 openAPIV3Schema from kubernetes-sigs/jobset {tag} (commit {commit}), "
               "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml; trimmed by tests/cluster/schemas/README.md: "
               "replicatedJobs[].template.spec (a batch/v1 JobSpec, validated with kubernetes-validate instead), "
               "volumeClaimPolicies and status removed; additionalProperties: false added to every object with declared "
               "properties (strict, like kubectl --validate=strict).")
    json.dump({"$comment": comment, **schema}, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
