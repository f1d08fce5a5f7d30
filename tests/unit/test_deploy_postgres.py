"""The Kubernetes PostgreSQL overlay says what its docs promise: two replicas, the URL only from a Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes-postgres"


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((OVERLAY / name).read_text()) if doc]


def test_the_overlay_builds_on_the_base_and_patches_the_server() -> None:
    (kustomization,) = _documents("kustomization.yaml")
    assert "../kubernetes" in kustomization["resources"]
    assert {"path": "server-postgres.yaml"} in kustomization["patches"]
    deleted = [p["patch"] for p in kustomization["patches"] if "patch" in p]
    assert any("PersistentVolumeClaim" in patch and "$patch: delete" in patch for patch in deleted)


def test_two_server_replicas_take_the_database_url_from_a_secret() -> None:
    (deployment,) = _documents("server-postgres.yaml")
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 2
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    (url,) = [env for env in server["env"] if env["name"] == "LOCAL_AGENT_SERVER_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "local-agent-database", "key": "url"}
    assert url.get("value") is None  # the strategic merge drops the base's SQLite value
    assert "startupProbe" in server


def test_the_example_secret_is_not_applied_by_the_overlay() -> None:
    (kustomization,) = _documents("kustomization.yaml")
    assert "database-secret.example.yaml" not in kustomization["resources"]
    (secret,) = _documents("database-secret.example.yaml")
    assert secret["kind"] == "Secret" and "url" in secret.get("stringData", secret.get("data", {}))
