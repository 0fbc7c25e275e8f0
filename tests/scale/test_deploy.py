"""The deployment files, checked with what installs here (no Docker engine, no cluster): hadolint on the
Dockerfile, yamllint on every YAML file, the compose files parsed by the compose-spec parser (and by docker-compose
when it is installed), the Kubernetes manifests against the Kubernetes JSON schemas (strict), plus the rules that
make them scale: no container names on scaled services, probes on /healthz and /readyz, resources everywhere, and
only settings comfyflow knows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyflow.embedded.prefect import SERVER_TUNING
from comfyflow.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
K8S_VERSIONS = ("1.30.0", "1.34.0")
INFRA = ("redis", "postgres", "prefect-migrate", "prefect-api", "prefect-services", "prefect", "minio", "storage-init")
#: One-shot or port-less: no HTTP to check (the others have a healthcheck).
NO_HEALTHCHECK = ("storage-init", "prefect-migrate", "prefect-services")
#: Every Prefect process shares these (Prefect's "How to scale self-hosted Prefect", prefect-redis).
PREFECT_REDIS = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} comes with the dev extras (pip install -e '.[dev]')"
    return str(path)


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(argv)}:\n{out.stdout}\n{out.stderr}"


def _env_example() -> dict[str, str]:
    lines = (COMPOSE / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            assert not op.endswith("?"), f"{name} is required ({arg}) and missing from .env.example"
            return arg
        return value or ""

    return _VAR.sub(one, text)


def _compose(name: str) -> dict[str, Any]:
    return yaml.safe_load(_interpolate((COMPOSE / name).read_text(), _env_example()))


def _settings_fields() -> set[str]:
    return {f"COMFYFLOW_{name.upper()}" for name in Settings.model_fields}


def test_dockerfile_is_multi_stage_non_root_and_lints_clean() -> None:
    _run([_tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")])
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    final = lines[lines.index(stages[-1]) :]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage runs as a non-root user"
    assert any(ln.startswith("COPY --from=build") for ln in final), "only the built virtualenv reaches runtime"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1 :][:1] == ["!pyproject.toml"], "the context is an allow-list"


def test_yaml_files_lint_clean() -> None:
    config = str(DEPLOY / ".yamllint.yaml")
    _run([_tool("yamllint"), "-s", "-c", config, str(COMPOSE), str(K8S), config])


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.infra.yml"])
def test_compose_files_parse_under_the_compose_spec(name: str) -> None:
    from compose_spec import PyOptions

    text = _interpolate((COMPOSE / name).read_text(), _env_example())
    # Docker's special host-gateway address is unknown to the compose-spec crate: give it an address to parse.
    parsed = PyOptions(apply_merge=True).from_yaml(text.replace(":host-gateway", ":172.17.0.1"))
    parsed.validate()
    data = yaml.safe_load(text)
    services = data["services"]
    for svc_name, svc in services.items():
        assert "container_name" not in svc, f"{svc_name}: a container name makes --scale impossible"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{svc_name} depends on {dep}, which is not in {name}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            assert source.startswith((".", "/")) or source in (data.get("volumes") or {}), f"{svc_name}: {vol}"
    for svc_name in INFRA:
        assert services[svc_name].get("healthcheck") or svc_name in NO_HEALTHCHECK, f"{svc_name} has a healthcheck"


def test_the_full_stack_scales_workers_and_configures_comfyflow_with_known_settings(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    full, infra = _compose("docker-compose.yml"), _compose("docker-compose.infra.yml")
    worker = full["services"]["worker"]
    assert "ports" not in worker and "container_name" not in worker, "--scale worker=N needs neither"
    assert int(worker["deploy"]["replicas"]) >= 2 and worker["command"] == ["worker"]
    assert full["services"]["api"]["command"] == ["serve", "--workers", "0"]
    for svc in INFRA:  # the infrastructure-only file is the same infrastructure, published on 127.0.0.1
        strip = lambda s: {k: v for k, v in s.items() if k != "ports"}  # noqa: E731
        assert strip(full["services"][svc]) == strip(infra["services"][svc]), f"{svc} differs between the files"
        for port in infra["services"][svc].get("ports") or []:
            loopback = port.get("host_ip") == "127.0.0.1" if isinstance(port, dict) else port.startswith("127.0.0.1:")
            assert loopback, f"infra ports stay on loopback: {svc} {port}"
    known = _settings_fields()
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    for name in ("api", "worker"):
        env = full["services"][name]["environment"]
        unknown = sorted(k for k in env if k.startswith("COMFYFLOW_") and k not in known)
        assert not unknown, f"{name} sets variables comfyflow does not read: {unknown}"
        json.loads(env["COMFYFLOW_STORAGE_OPTIONS"])
        for key in [k for k in dict(__import__("os").environ) if k.startswith("COMFYFLOW_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()  # the settings load from exactly what compose passes
        assert settings.redis_url is not None and settings.prefect_api_url == "http://prefect:4200/api"
        assert settings.resolved_storage_url.startswith("s3://")


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.infra.yml"])
def test_docker_compose_config_accepts_the_files(name: str, tmp_path: Path) -> None:
    # docker-compose 1.29 predates the top-level `name` key; everything else is checked as written.
    text = "\n".join(ln for ln in (COMPOSE / name).read_text().splitlines() if not ln.startswith("name:"))
    copy = tmp_path / name
    copy.write_text(text)
    argv = ["docker-compose", "-f", str(copy), "--project-directory", str(COMPOSE)]
    _run([*argv, "--env-file", str(COMPOSE / ".env.example"), "config", "-q"])


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files, "kustomization.yaml lists every manifest"
    return [(f, doc) for f in files for doc in yaml.safe_load_all((K8S / f).read_text()) if doc]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    import kubernetes_validate

    for name, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}") from None


def test_kubernetes_workloads_have_probes_resources_and_run_unprivileged() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _manifests()}
    known = _settings_fields()
    config = docs[("ConfigMap", "comfyflow-config")]["data"]
    assert not sorted(k for k in config if k not in known), "the ConfigMap names only settings comfyflow reads"
    secret = docs[("Secret", "comfyflow-secrets")]["stringData"]
    assert not sorted(k for k in secret if k not in known)
    json.loads(secret["COMFYFLOW_STORAGE_OPTIONS"])
    api = docs[("Deployment", "comfyflow-api")]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["args"] == ["serve", "--workers", "0"]
    worker = docs[("Deployment", "comfyflow-worker")]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > 30, "longer than the worker's own 30 s grace"
    for (kind, name), doc in docs.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, f"{name} runs as non-root"
        for c in pod["containers"]:
            assert {"requests", "limits"} <= set(c["resources"]), f"{name}/{c['name']} has requests and limits"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            no_http = name in ("comfyflow-worker", "prefect-services")
            assert "livenessProbe" in c or no_http, f"{name}/{c['name']} has a liveness probe"


def test_kustomize_builds_and_the_result_matches_the_schemas() -> None:
    import kubernetes_validate

    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert all(d["metadata"].get("namespace", "comfyflow") == "comfyflow" for d in docs)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def _prefect_shape(processes: dict[str, tuple[list[str], dict[str, Any]]], replicas: int) -> None:
    """Several API replicas without services, exactly one services process, one database, one Redis messaging."""
    api = [n for n, (argv, _) in processes.items() if argv[:2] == ["server", "start"]]
    services = [n for n, (argv, _) in processes.items() if argv == ["server", "services", "start"]]
    assert replicas > 1 and len(api) == 1 and len(services) == 1, (api, services, replicas)
    assert "--no-services" in processes[api[0]][0], "API replicas leave the background services to one process"
    envs = [env for _, env in processes.values()]
    for key in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"):
        assert len({env.get(key) for env in envs}) == 1 and envs[0].get(key), f"every Prefect process shares {key}"
    for env in envs:
        assert PREFECT_REDIS.items() <= env.items(), f"Redis messaging everywhere: {env}"
        assert str(env["PREFECT_API_DATABASE_MIGRATE_ON_START"]).lower() == "false", "migrations run once"
        assert env["PREFECT_REDIS_MESSAGING_URL"].endswith("/1"), "Prefect's Redis DB beside comfyflow's DB 0"
        for name, value in SERVER_TUNING.items():
            assert str(env.get(name)) == value, f"{name}: comfyflow's recorder batching"


def test_compose_scales_the_prefect_api_beside_one_services_process() -> None:
    for name in ("docker-compose.yml", "docker-compose.infra.yml"):
        services = _compose(name)["services"]
        prefect = {n: s for n, s in services.items() if s.get("entrypoint") == ["comfyflow-prefect"]}
        assert set(prefect) == {"prefect-migrate", "prefect-api", "prefect-services"}, sorted(prefect)
        migrate = prefect.pop("prefect-migrate")
        assert migrate["command"] == ["server", "database", "upgrade", "-y"] and migrate["restart"] == "no"
        procs = {n: (s["command"], s["environment"]) for n, s in prefect.items()}
        _prefect_shape(procs, int(services["prefect-api"]["deploy"]["replicas"]))
        assert "deploy" not in services["prefect-services"], "one services process, never scaled"
        for svc in prefect.values():
            assert svc["depends_on"]["prefect-migrate"]["condition"] == "service_completed_successfully"
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        # `prefect` (the name comfyflow and the UI use) balances over the replicas, websockets included
        lb = services["prefect"]
        assert lb["ports"] == ["127.0.0.1:4200:4200"] and lb["depends_on"]["prefect-api"]
        conf = lb["command"][0]
        assert "server prefect-api:4200;" in conf and "proxy_set_header Upgrade $http_upgrade;" in conf


def test_kubernetes_scales_the_prefect_api_beside_one_services_process() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _manifests()}
    config = docs[("ConfigMap", "prefect-config")]["data"]
    procs, replicas = {}, {}
    for name in ("prefect", "prefect-services"):
        spec = docs[("Deployment", name)]["spec"]
        replicas[name] = spec["replicas"]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["command"] == ["comfyflow-prefect"], "Prefect's CLI with comfyflow's timestamp binding"
        assert container["envFrom"] == [{"configMapRef": {"name": "prefect-config"}}]
        env = {**config, **{e["name"]: e.get("value", "secret") for e in container["env"]}}
        procs[name] = (container["args"], env)
    _prefect_shape(procs, replicas["prefect"])
    assert replicas["prefect-services"] == 1
    assert docs[("Deployment", "prefect-services")]["spec"]["strategy"]["type"] == "Recreate", "never two at once"
    (init,) = docs[("Deployment", "prefect-services")]["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["server", "database", "upgrade", "-y"], "the services pod migrates, once"
    selector = docs[("Service", "prefect")]["spec"]["selector"]
    assert selector.items() <= docs[("Deployment", "prefect")]["spec"]["template"]["metadata"]["labels"].items()
    services_labels = docs[("Deployment", "prefect-services")]["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= services_labels.items(), "the Service balances over the API replicas only"
