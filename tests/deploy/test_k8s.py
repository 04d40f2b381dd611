"""Kubernetes manifests: they parse, validate against the schemas offline, and refer to
each other correctly (selectors, ports, config, secrets, volumes, addresses)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aios.config import parse_config
from tests.helpers import REPO

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge as kustomize does it for these patches (lists of named items
    merge by name)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            match = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if match is None:
                out_list.append(item)
            else:
                out_list[match] = merge(out_list[match], item)
        return out_list
    return patch


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization produces (generated names kept without hash)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += build(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in kustomization.get("configMapGenerator", []):
        data = {}
        for spec in gen["files"]:
            key, _, name = spec.partition("=")
            data[key] = (directory / name).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"]}, "data": data})
    for gen in kustomization.get("secretGenerator", []):
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]},
                     "stringData": dict(lit.split("=", 1) for lit in gen["literals"])})
    for patch in kustomization.get("patches", []):
        p = yaml.safe_load((directory / patch["path"]).read_text())
        for i, d in enumerate(docs):
            if (d["kind"], d["metadata"]["name"]) == (p["kind"], p["metadata"]["name"]):
                docs[i] = merge(d, p)
    return docs


# Secrets the operator creates (the tree ships none: a shipped value is a shared secret).
OPERATOR_SECRETS = {"aios-jwt": {"hs256_secret"}}

TREES = {"base": K8S / "base", "dev": K8S / "overlays/dev", "prod": K8S / "overlays/prod"}


@pytest.fixture(params=TREES.values(), ids=TREES.keys())
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_every_object_validates_offline(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_selectors_ports_and_references_hold(objects: list[dict[str, Any]]) -> None:
    deployments = by_kind(objects, "Deployment")
    configmaps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    claims = by_kind(objects, "PersistentVolumeClaim")
    pods = {name: d["spec"]["template"] for name, d in deployments.items()}
    for name, d in deployments.items():
        labels = pods[name]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for volume in pods[name]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in {*secrets, *OPERATOR_SECRETS}
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounts = {m["name"] for c in pods[name]["spec"]["containers"]
                  for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in pods[name]["spec"].get("volumes", [])}
    for name, svc in by_kind(objects, "Service").items():
        matching = [p for p in pods.values()
                    if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert matching, f"service {name} selects no pod"
        port_names = {p["name"] for c in matching[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names, name
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        for obj in by_kind(objects, kind).values():
            target = obj["spec"].get("scaleTargetRef", {}).get("name")
            if target:
                assert target in deployments
            else:
                selector = obj["spec"]["selector"]["matchLabels"]
                assert any(selector.items() <= p["metadata"]["labels"].items()
                           for p in pods.values())
    for policy in by_kind(objects, "NetworkPolicy").values():
        selectors = [policy["spec"]["podSelector"]] + [
            f["podSelector"] for rule in policy["spec"]["ingress"] for f in rule["from"]]
        for sel in selectors:
            assert any(sel["matchLabels"].items() <= p["metadata"]["labels"].items()
                       for p in pods.values()), sel


def test_config_addresses_point_where_they_should(objects: list[dict[str, Any]]) -> None:
    configmaps, services = by_kind(objects, "ConfigMap"), by_kind(objects, "Service")
    gateway = parse_config(yaml.safe_load(configmaps["aios-gateway-config"]["data"]["stack.yaml"]))
    for backend in gateway.gateway.backends.values():
        for address in (backend.http, backend.grpc):
            host, port = address.rsplit(":", 1)
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    sidecar = parse_config(yaml.safe_load(configmaps["aios-sidecar-config"]["data"]["stack.yaml"]))
    backend_pod = by_kind(objects, "Deployment")["aios-backend"]["spec"]["template"]["spec"]
    triton = next(c for c in backend_pod["containers"] if c["name"] == "triton")
    triton_ports = {p["containerPort"] for p in triton["ports"]}
    for address in (sidecar.sidecar.triton.http, sidecar.sidecar.triton.grpc):
        host, port = address.rsplit(":", 1)
        # The sidecar calls the Triton in its own pod.
        assert host == "127.0.0.1" and int(port) in triton_ports
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_gateway_reads_its_key_from_the_mounted_secret(
        objects: list[dict[str, Any]]) -> None:
    assert not by_kind(objects, "Secret"), "no secret value ships with the manifests"
    configmaps = by_kind(objects, "ConfigMap")
    auth = parse_config(yaml.safe_load(
        configmaps["aios-gateway-config"]["data"]["stack.yaml"])).gateway.auth
    assert auth.enabled and auth.hs256_secret is None and auth.hs256_secret_file is not None
    pod = by_kind(objects, "Deployment")["aios-gateway"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    mounts = [m for m in gateway["volumeMounts"]
              if auth.hs256_secret_file.parent == Path(m["mountPath"])]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    secret = volumes[mounts[0]["name"]]["secret"]
    assert auth.hs256_secret_file.name in OPERATOR_SECRETS[secret["secretName"]]
    assert secret.get("optional", False) is False, "no secret, no gateway"


def test_our_containers_are_locked_down(objects: list[dict[str, Any]]) -> None:
    for _name, d in by_kind(objects, "Deployment").items():
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if c["name"] in ("gateway", "sidecar"):
                ctx = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
                assert ctx["runAsNonRoot"] is True and ctx["readOnlyRootFilesystem"] is True
                assert c["resources"]["requests"] and c["readinessProbe"] and c["livenessProbe"]
    assert by_kind(objects, "Deployment")["aios-gateway"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("service", ["gateway", "sidecar"])
def test_images_are_slim_and_non_root(service: str) -> None:
    lines = [ln for ln in (REPO / "deploy/docker" / f"{service}.Dockerfile").read_text(
    ).splitlines() if not ln.startswith("#")]
    text = "\n".join(lines)
    assert "USER 10001" in text and "slim" in text
    assert "torch" not in text and "[triton]" not in text and "pip install --no-cache-dir" in text
    assert f'"aios", "{service}"' in text
