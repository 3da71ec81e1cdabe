"""k8s/base and both overlays, built with the real ``kubectl kustomize``, checked offline."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .k8s_checks import (
    REPO,
    check_job_bounded,
    check_no_secret_values,
    check_pod_security,
    env_of,
    gpu_containers,
    kustomize,
    parse_quantity,
    pod_specs,
    validate_object,
)

TARGETS = ("base", "overlays/dev", "overlays/gpu")
STAGES = ("meshgen", "render", "train", "neuro")
KNOWN_METRICS = {
    "flatland_rpc_requests_total", "flatland_rpc_errors_total", "flatland_rpc_latency_seconds_bucket",
    "flatland_job_items_done_total", "flatland_job_items_total", "flatland_train_loss", "flatland_train_top1",
}


@pytest.fixture(scope="module", params=TARGETS)
def built(request):
    return request.param, kustomize(request.param)


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_every_object_validates_strictly(built):
    target, objs = built
    assert len(objs) >= 20, f"{target}: suspiciously few objects"
    for obj in objs:
        validate_object(obj)


def test_security_secrets_and_bounds(built):
    _, objs = built
    for obj in objs:
        check_pod_security(obj)
        check_no_secret_values(obj)
        check_job_bounded(obj)
    # The store credentials are referenced, never defined: the Secret is created by hand (k8s/README.md).
    assert not by_kind(objs, "Secret")


def test_namespaced_and_labelled(built):
    _, objs = built
    for obj in objs:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "beyond-flatland", obj["metadata"]["name"]
        if obj["kind"] not in ("Namespace",):
            assert obj["metadata"].get("namespace") == "flatland", f"{obj['kind']}/{obj['metadata']['name']}"


def test_stage_services_have_grpc_probes_and_matching_services(built):
    target, objs = built
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    for stage in STAGES:
        deployment, service = deployments[stage], services[stage]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"] == 50051, f"{stage}: {probe} must be native gRPC"
        # The Service selects exactly this Deployment's pods and targets named container ports.
        selector = service["spec"]["selector"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
        if target != "overlays/gpu":  # plain Prometheus: the pod's annotations (the gpu overlay uses ServiceMonitors)
            assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == ports["metrics"]
        assert container["args"][:2] == ["serve", stage]
        assert "--metrics-port" in container["args"]
        env = env_of(container)
        assert env["FLATLAND_STORE"].startswith("s3://")
        assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "flatland-store", "key": "secret-key"}}
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        for resource in ("cpu", "memory"):
            assert parse_quantity(requests[resource]) <= parse_quantity(limits[resource])


def test_gpu_only_where_used(built):
    target, objs = built
    gpus = gpu_containers(objs)
    deployments = by_kind(objs, "Deployment")
    if target == "overlays/gpu":
        assert gpus == {"render", "train"}
        assert deployments["render"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/render-gpu:0.1.0")
        assert deployments["train"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/train-gpu:0.1.0")
        assert env_of(deployments["render"]["spec"]["template"]["spec"]["containers"][0])["PYOPENGL_PLATFORM"] == "egl"
        for stage in ("meshgen", "neuro"):
            assert "-gpu" not in deployments[stage]["spec"]["template"]["spec"]["containers"][0]["image"]
    else:
        assert gpus == set()
        assert env_of(deployments["render"]["spec"]["template"]["spec"]["containers"][0])["PYOPENGL_PLATFORM"] == "osmesa"


def test_dev_fits_one_small_node():
    objs = kustomize("overlays/dev")
    cpu = memory = 0.0
    for obj in objs:
        replicas = obj["spec"].get("replicas", 1) if obj["kind"] in ("Deployment", "StatefulSet") else 1
        if obj["kind"] == "Job":
            continue  # runs once, before the services matter
        for pod in pod_specs(obj):
            for c in pod["containers"]:
                requests = c.get("resources", {}).get("requests", {})
                cpu += replicas * parse_quantity(requests.get("cpu", 0))
                memory += replicas * parse_quantity(requests.get("memory", 0))
    assert cpu <= 1.0, f"dev overlay requests {cpu} CPU"
    assert memory <= 2 * 2**30, f"dev overlay requests {memory / 2**30:.1f} GiB"
    (minio,) = by_kind(objs, "StatefulSet").values()
    assert minio["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert all(d["spec"]["replicas"] == 1 for d in by_kind(objs, "Deployment").values())


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def _pod_labels(objs):
    return {o["metadata"]["name"]: (o["spec"]["template"]["metadata"]["labels"]) for o in objs if "template" in o.get("spec", {})}


def _ingress_allowed(policies, target_labels, source_labels, source_ns_labels, port) -> bool:
    """Whether any NetworkPolicy selecting the target admits the source on port (same-namespace semantics)."""
    for policy in policies:
        spec = policy["spec"]
        if not _selects(spec["podSelector"], target_labels):
            continue
        for rule in spec.get("ingress", []):
            if port not in {p["port"] for p in rule.get("ports", [])}:
                continue
            for peer in rule.get("from", []):
                ns_ok = _selects(peer["namespaceSelector"], source_ns_labels) if "namespaceSelector" in peer else True
                pod_ok = _selects(peer["podSelector"], source_labels) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


def test_network_policies_admit_only_stages_and_monitoring():
    objs = kustomize("base")
    policies = list(by_kind(objs, "NetworkPolicy").values())
    default = by_kind(objs, "NetworkPolicy")["default-deny-ingress"]["spec"]
    assert default["podSelector"] == {} and default["policyTypes"] == ["Ingress"] and "ingress" not in default
    namespace = by_kind(objs, "Namespace")["flatland"]["metadata"]["labels"]
    monitoring_ns = {"kubernetes.io/metadata.name": "monitoring"}
    other_ns = {"kubernetes.io/metadata.name": "default"}
    pods = _pod_labels(objs)
    stage_pod = pods["render"]
    stranger = {"app": "something-else"}
    for stage in STAGES:
        assert pods[stage]["flatland.io/role"] == "stage"
        assert _ingress_allowed(policies, pods[stage], stage_pod, namespace, 50051)
        assert not _ingress_allowed(policies, pods[stage], stranger, namespace, 50051)
        assert _ingress_allowed(policies, pods[stage], {}, monitoring_ns, 9090)
        assert not _ingress_allowed(policies, pods[stage], {}, monitoring_ns, 50051)
    minio = pods["minio"]
    assert _ingress_allowed(policies, minio, stage_pod, namespace, 9000)
    assert _ingress_allowed(policies, minio, pods["minio-create-bucket"], namespace, 9000)
    assert not _ingress_allowed(policies, minio, stranger, namespace, 9000)
    assert not _ingress_allowed(policies, minio, stage_pod, other_ns, 9000)  # a namespace not opted in
    assert not _ingress_allowed(policies, minio, {}, monitoring_ns, 9000)
    push = pods["pushgateway"]
    assert _ingress_allowed(policies, push, stage_pod, namespace, 9091)
    assert _ingress_allowed(policies, push, {}, monitoring_ns, 9091)
    assert not _ingress_allowed(policies, push, stranger, namespace, 9091)


def test_store_and_bucket_job():
    objs = kustomize("base")
    (minio,) = by_kind(objs, "StatefulSet").values()
    (container,) = minio["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["MINIO_ROOT_PASSWORD"] == {"secretKeyRef": {"name": "flatland-store", "key": "secret-key"}}
    assert minio["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    bucket = by_kind(objs, "Job")["minio-create-bucket"]
    (mc,) = bucket["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.[0-9TZ-]+", mc["image"])
    assert mc["args"] == ["mb", "--ignore-existing", "store/flatland"]
    # The alias URL is built by Kubernetes from the secretKeyRef env vars declared before it.
    names = [e["name"] for e in mc["env"]]
    assert names.index("MC_HOST_store") > names.index("AWS_SECRET_ACCESS_KEY")
    services = by_kind(objs, "Service")
    assert services["minio"]["spec"]["selector"].items() <= minio["spec"]["template"]["metadata"]["labels"].items()


def test_service_monitors_select_real_ports():
    objs = kustomize("overlays/gpu")
    monitors = by_kind(objs, "ServiceMonitor")
    assert set(monitors) == {"flatland-services", "flatland-pushgateway"}
    services = by_kind(objs, "Service")
    for monitor in monitors.values():
        selected = [s for s in services.values() if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert selected, f"{monitor['metadata']['name']} selects no Service"
        for service in selected:
            port_names = {p["name"] for p in service["spec"]["ports"]}
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert {s["metadata"]["name"] for s in services.values()
            if _selects(monitors["flatland-services"]["spec"]["selector"], s["metadata"]["labels"])} == set(STAGES)
    assert monitors["flatland-pushgateway"]["spec"]["endpoints"][0]["honorLabels"] is True
    assert "ServiceMonitor" not in {o["kind"] for o in kustomize("base")}


def test_one_scrape_per_pod(built):
    """Each metrics-exporting pod is scraped exactly once: by its annotations (the stock kubernetes-pods
    job), its Service's annotations (kubernetes-service-endpoints) or a ServiceMonitor, never two of them."""
    target, objs = built
    services = by_kind(objs, "Service")
    monitors = by_kind(objs, "ServiceMonitor")
    exporters = {name: o for name, o in by_kind(objs, "Deployment").items() if name in (*STAGES, "pushgateway")}
    assert len(exporters) == 5
    for name, deployment in exporters.items():
        template = deployment["spec"]["template"]
        scrapes = []
        if template["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true":
            scrapes.append("pod annotations")
        for service in services.values():
            if not _selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"]):
                continue
            if service["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true":
                scrapes.append(f"Service {service['metadata']['name']} annotations")
            for monitor in monitors.values():
                if _selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                    scrapes.append(f"ServiceMonitor {monitor['metadata']['name']}")
        assert len(scrapes) == 1, f"{target}: {name} is scraped by {scrapes or 'nothing'}"
    for monitor in monitors.values():  # kube-prometheus-stack selects ServiceMonitors on `release`
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap():
    objs = kustomize("base")
    configmap = by_kind(objs, "ConfigMap")["flatland-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["flatland.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bflatland_[a-z0-9_]+", " ".join(exprs)))
    assert used <= KNOWN_METRICS, used - KNOWN_METRICS
    # Throughput per stage, errors by code, latency, loss/accuracy and the remaining-shards queue.
    assert used == KNOWN_METRICS
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("throughput", "errors", "latency", "loss", "accuracy", "remaining"):
        assert word in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_kueue_and_argo_components_validate():
    """The optional components: Kueue queues (subset schemas of Kueue's CRDs) and the Workflow's RBAC."""
    from .k8s_checks import KUEUE_SCHEMAS

    for name in ("kueue", "argo"):
        docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "components" / name / (
            "queues.yaml" if name == "kueue" else "workflow-rbac.yaml")).read_text()) if d]
        for obj in docs:
            validate_object(obj)
        if name == "kueue":
            kinds = {o["kind"]: o for o in docs}
            assert set(kinds) == set(KUEUE_SCHEMAS)
            assert kinds["LocalQueue"]["spec"]["clusterQueue"] == kinds["ClusterQueue"]["metadata"]["name"]
            flavors = {f["name"] for g in kinds["ClusterQueue"]["spec"]["resourceGroups"] for f in g["flavors"]}
            assert flavors == {kinds["ResourceFlavor"]["metadata"]["name"]}
            # The full study queues through this LocalQueue.
            from services.common.spec.experiment import load_spec
            assert load_spec(REPO / "experiments" / "beyond-flatland.yaml").cluster.queue == kinds["LocalQueue"]["metadata"]["name"]
        else:
            from services.cluster.argo import WORKFLOW_ACCOUNT
            assert {o["metadata"]["name"] for o in docs} == {WORKFLOW_ACCOUNT}
    bad = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "q"}, "spec": {"clusterQueu": "x"}}
    with pytest.raises(Exception, match="clusterQueu"):
        validate_object(bad)
