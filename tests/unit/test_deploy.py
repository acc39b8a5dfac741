"""deploy/: the Helm chart, the plain manifests rendered from it, the systemd units.

Offline: the manifests are validated with kubernetes-validate (strict: unknown fields fail)
against one fixed Kubernetes version; the chart is rendered by ``tests/support/helmlite.py``
(no Helm here), and the committed plain manifests must be exactly its output (``make
manifests``). What runs on a cluster is not tested here (docs/scale-out.md says so).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.helmlite import TemplateError, render_chart, render_template
from voidrun_server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/voidrun"
PLAIN = ROOT / "deploy/kubernetes/voidrun.yaml"
PLAIN_VALUES = ROOT / "deploy/helm/plain-values.yaml"
SYSTEMD = ROOT / "deploy/systemd"
K8S_VERSION = "1.31.0"  # fixed: a newer kubernetes-validate must not change the verdict
# issue 17's interface; part of config.py once the fleet core is merged
FLEET_SETTINGS = {
    "VOIDRUN_ROLE",
    "VOIDRUN_NODE_ID",
    "VOIDRUN_NODE_URL",
    "VOIDRUN_NODE_TOKEN",
    "VOIDRUN_NODE_TUNNEL_PORT",
    "VOIDRUN_NODE_HEARTBEAT_SECONDS",
    "VOIDRUN_NODE_SUSPECT_AFTER_MISSES",
    "VOIDRUN_NODE_LOST_AFTER_SECONDS",
    "VOIDRUN_NODE_MAX_SANDBOXES",
    "VOIDRUN_EMIT_NODE_ID",
}
OTHER_VALUES: dict[str, Any] = {
    "secret": {"create": False, "name": "mine"},
    "bootstrapApiKey": "vr_" + "a1B2c3D4" * 5,
    "api": {"extraEnv": [{"name": "VOIDRUN_PUBLIC_BASE_URL", "value": "https://x.example"}]},
    "node": {
        "extraEnv": [{"name": "VOIDRUN_WARM_POOL_SIZE", "value": "4"}],
        "tolerations": [{"key": "sandboxes", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"voidrun/node": "true"},
    },
}


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def plain_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PLAIN_VALUES.read_text())
    return loaded


def by_kind(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in found}


def validate_all(found: list[dict[str, Any]]) -> None:
    for doc in found:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_plain_manifests_are_the_rendered_chart() -> None:
    rendered = render_chart(CHART, plain_values())
    assert PLAIN.read_text() == rendered, "deploy/kubernetes is stale: run `make manifests`"
    kinds = sorted(d["kind"] for d in docs(rendered))
    assert kinds == ["DaemonSet", "Deployment", "Secret", "Service"]


@pytest.mark.parametrize("variant", ["plain", "defaults", "other"])
def test_manifests_validate_against_kubernetes(variant: str) -> None:
    text = {
        "plain": PLAIN.read_text(),
        "defaults": render_chart(CHART),
        "other": render_chart(CHART, OTHER_VALUES, name="vr2", namespace="sandboxes"),
    }[variant]
    found = docs(text)
    validate_all(found)
    if variant == "other":
        kinds = by_kind(found)
        assert "Secret" not in kinds  # an existing one is used
        env = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "VOIDRUN_PUBLIC_BASE_URL", "value": "https://x.example"} in env
        assert env[-1]["name"] == "VOIDRUN_PUBLIC_BASE_URL"
        secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
        assert secret_refs == {"mine"}


def test_validation_fails_on_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are caught."""
    found = docs(PLAIN.read_text())
    daemonset = by_kind(found)["DaemonSet"]
    typo = copy.deepcopy(daemonset)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    wrong = copy.deepcopy(daemonset)
    wrong["spec"]["template"]["spec"]["hostPID"] = "yes"
    for broken in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec = by_kind(found)[kind]["spec"]["template"]["spec"]
    [only] = spec["containers"]
    result: dict[str, Any] = only
    return result


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_api_and_node_shape() -> None:
    found = docs(PLAIN.read_text())
    api, node = container(found, "Deployment"), container(found, "DaemonSet")
    api_env, node_env = env_of(api), env_of(node)
    assert api["args"] == ["serve"] and api_env["VOIDRUN_ROLE"] == "api"
    assert node["args"] == ["node"] and "VOIDRUN_ROLE" not in node_env
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert node["readinessProbe"]["httpGet"]["path"] == "/internal/v1/health"
    assert node["securityContext"]["privileged"] is True
    assert by_kind(found)["DaemonSet"]["spec"]["template"]["spec"]["hostPID"] is True
    # the node URL from the pod IP (downward API), on the port it listens on
    assert node_env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert node_env["VOIDRUN_NODE_URL"] == f"http://$(POD_IP):{node_env['VOIDRUN_PORT']}"
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert ports == {
        "internal": int(node_env["VOIDRUN_PORT"]),
        "tunnel": int(node_env["VOIDRUN_NODE_TUNNEL_PORT"]),
    }
    # host paths: the data dir (mounts propagate to the host), the claims, cgroups
    mounts = {m["mountPath"]: m for m in node["volumeMounts"]}
    assert mounts[node_env["VOIDRUN_DATA_DIR"]]["mountPropagation"] == "Bidirectional"
    assert Path(node_env["VOIDRUN_HOST_CLAIMS_DIR"]).parent.as_posix() in mounts
    assert "/sys/fs/cgroup" in mounts
    for c in (api, node):  # both get the token and the database from the Secret
        for name, key in (
            ("VOIDRUN_NODE_TOKEN", "node-token"),
            ("VOIDRUN_DATABASE_URL", "database-url"),
        ):
            assert env_of(c)[name]["secretKeyRef"] == {"name": "voidrun-secrets", "key": key}
        assert c["resources"]["requests"]
    service = by_kind(found)["Service"]
    assert (
        service["spec"]["selector"]
        == by_kind(found)["Deployment"]["spec"]["selector"]["matchLabels"]
    )


def known_settings() -> set[str]:
    return {f"VOIDRUN_{name.upper()}" for name in Settings.model_fields} | FLEET_SETTINGS


def test_every_setting_named_in_deploy_exists() -> None:
    named: set[str] = set()
    for path in [*CHART.rglob("*.yaml"), *SYSTEMD.iterdir(), PLAIN]:
        named |= set(re.findall(r"\bVOIDRUN_[A-Z0-9_]+", path.read_text()))
    assert named - known_settings() == set()
    assert {"VOIDRUN_CGROUP_PARENT", "VOIDRUN_HOST_CLAIMS_DIR", "VOIDRUN_SANDBOX_SUBNET"} <= named


def test_the_renderer_refuses_what_it_does_not_know() -> None:
    scope = {"Values": {"a": {"b": 0, "c": [1]}}}
    assert render_template("x: {{ .Values.a.b | quote }}", scope) == 'x: "0"'
    assert render_template("{{- if .Values.a.b }}no{{- else }}yes{{ end }}", scope) == "yes"
    assert render_template("a:\n  {{- toYaml .Values.a.c | nindent 2 }}", scope) == "a:\n  - 1"
    for bad in ("{{ .Values.nope }}", '{{ include "x" . }}', "{{ .Values.a.b | upper }}"):
        with pytest.raises(TemplateError):
            render_template(bad, scope)


def test_systemd_units_verify() -> None:
    """systemd-analyze accepts both units without a warning (the binary path swapped for
    this venv's); the node keeps the sandboxes' mounts and processes across its restarts."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = [SYSTEMD / "voidrun-api.service", SYSTEMD / "voidrun-node.service"]
    node = units[1].read_text()
    for option in ("ProtectSystem", "PrivateTmp", "PrivateDevices", "ProtectHome"):
        assert not re.search(rf"^{option}=", node, re.M), option  # private mount namespace
    assert re.search(r"^KillMode=process$", node, re.M)
    assert re.search(r"^DynamicUser=yes$", units[0].read_text(), re.M)
    tmp = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    try:
        binary = Path(sys.executable).with_name("voidrun-server")
        for unit in units:
            text = unit.read_text().replace("/opt/voidrun/venv/bin/voidrun-server", str(binary))
            (tmp / unit.name).write_text(text)
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *[str(tmp / u.name) for u in units]],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
    finally:
        shutil.rmtree(tmp)
