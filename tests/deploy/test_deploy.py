"""The deploy files (deploy/): Docker Compose, Kubernetes manifests, Dockerfiles, the load
balancer and Prometheus configurations. No container engine runs here, so they are checked
as documents: against the Compose specification and the Kubernetes schemas, and against the
code they start (settings, commands, flags, ports)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from core.settings import Settings, load_settings
from proxy.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
KUBERNETES_VERSION = "1.37.0"
STILLROOM_IMAGES = {"stillroom", "stillroom-cuda"}


# --- the documents ---------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


@cache
def manifest_files() -> tuple[Path, ...]:
    return tuple(sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))


@cache
def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


def resources() -> Iterator[dict[str, Any]]:
    for path in manifest_files():
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def resource(kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def containers() -> Iterator[dict[str, Any]]:
    for r in resources():
        if r["kind"] in ("Deployment", "StatefulSet"):
            yield from r["spec"]["template"]["spec"]["containers"]


def container(name: str) -> dict[str, Any]:
    [found] = [c for c in containers() if c["name"] == name]
    return found


def config_file() -> dict[str, Any]:
    """The TOML settings file of the ConfigMap."""
    return tomllib.loads(resource("ConfigMap", "stillroom-config")["data"]["stillroom.toml"])


def cli_commands() -> dict[str, Any]:
    """The commands of the ``stillroom`` CLI, as the click commands typer builds."""
    commands: dict[str, Any] = typer.main.get_command(app).commands
    return commands


def options(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` and ``--flag=value`` of a command line, by flag."""
    found: dict[str, str | None] = {}
    for n, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        flag, equals, value = token.partition("=")
        if equals:
            found[flag] = value
        elif n + 1 < len(argv) and not argv[n + 1].startswith("--"):
            found[flag] = argv[n + 1]
        else:
            found[flag] = None
    return found


def stillroom_command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every ``stillroom`` command line the deploy files run, with where it is."""
    for name, service in services().items():
        if image_name(service["image"]) in STILLROOM_IMAGES:
            yield f"compose {name}", [str(t) for t in service["command"]]
    for c in containers():
        if image_name(c["image"]) in STILLROOM_IMAGES:
            yield f"k8s {c['name']}", [str(t) for t in c["args"]]
    for dockerfile in DOCKERFILES:
        [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
        yield dockerfile.name, json.loads(cmd)


def listening_port(argv: list[str]) -> int:
    port = options(argv).get("--port")
    assert port is not None, f"{argv} does not say its --port"
    return int(port)


def image_name(image: str) -> str:
    return image.rpartition("/")[2].partition(":")[0]


def host_port(url_or_target: str) -> tuple[str, int]:
    parts = urlsplit(url_or_target if "//" in url_or_target else f"//{url_or_target}")
    assert parts.hostname is not None, url_or_target
    assert parts.port is not None, url_or_target
    return parts.hostname, parts.port


def compose_port(service: str) -> int:
    """The port a Compose service listens on, from its command line."""
    return listening_port([str(t) for t in services()[service]["command"]])


def deploy_texts() -> dict[str, str]:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DOCKERFILES]
    files += [DEPLOY / ".env.example", DEPLOY / "nginx.conf"]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def env_example() -> dict[str, str]:
    """The variables of .env.example, commented-out ones included."""
    pairs = re.findall(
        r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", (DEPLOY / ".env.example").read_text(), re.M
    )
    return dict(pairs)


# --- the specifications ------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_kubernetes_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest() -> None:
    assert sorted(kustomization()["resources"]) == [p.name for p in manifest_files()]


# --- settings and commands ---------------------------------------------------------------


def test_every_stillroom_variable_in_the_deploy_files_is_a_setting() -> None:
    settings = {f"STILLROOM_{name.upper()}" for name in Settings.model_fields}
    cli = {
        param.envvar
        for command in cli_commands().values()
        for param in command.params
        if isinstance(param.envvar, str)
    }
    used = {
        (path, name)
        for path, text in deploy_texts().items()
        for name in re.findall(r"STILLROOM_[A-Z0-9_]+", text)
    }
    assert used, "the deploy files name no STILLROOM_* variable"
    assert sorted((path, name) for path, name in used if name not in settings | cli) == []


def test_configmap_settings_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "stillroom.toml"
    path.write_text(resource("ConfigMap", "stillroom-config")["data"]["stillroom.toml"])
    settings = load_settings(path)
    assert settings.student_backend == "vllm"
    assert str(settings.data_dir) == "/data"


def test_every_stillroom_command_and_flag_exists_in_the_cli() -> None:
    commands = cli_commands()
    lines = list(stillroom_command_lines())
    assert {argv[0] for _, argv in lines} >= {"proxy", "distiller"}
    for where, argv in lines:
        assert argv[0] in commands, f"{where}: no command `stillroom {argv[0]}`"
        known = {opt for param in commands[argv[0]].params for opt in param.opts}
        unknown = sorted(set(options(argv)) - known)
        assert unknown == [], f"{where}: `stillroom {argv[0]}` has no {unknown}"


def test_every_variable_compose_requires_is_in_the_env_example() -> None:
    text = (DEPLOY / "docker-compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required
    assert required <= set(env_example())
    assert {"STILLROOM_TEACHER_API_KEY", "STILLROOM_API_KEYS", "STILLROOM_ADMIN_TOKEN"} <= set(
        env_example()
    )


def test_kubernetes_secrets_hold_every_key_the_pods_read() -> None:
    secrets = {r["metadata"]["name"]: r for r in resources() if r["kind"] == "Secret"}
    for c in containers():
        for ref in c.get("envFrom", []):
            assert ref["secretRef"]["name"] in secrets, c["name"]
        for env in c.get("env", []):
            key_ref = env.get("valueFrom", {}).get("secretKeyRef")
            if key_ref and not key_ref.get("optional"):
                assert key_ref["key"] in secrets[key_ref["name"]]["stringData"], env["name"]
    keys = secrets["stillroom-secrets"]["stringData"]
    assert {"STILLROOM_TEACHER_API_KEY", "STILLROOM_API_KEYS", "STILLROOM_ADMIN_TOKEN"} <= set(keys)
    assert urlsplit(keys["STILLROOM_DATABASE_URL"]).hostname == "stillroom-postgres"


# --- ports ---------------------------------------------------------------------------------


def test_load_balancer_sends_to_every_proxy_on_its_port() -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    [upstream] = re.findall(r"upstream \w+ \{(.*?)\}", nginx, re.DOTALL)
    servers = [host_port(s) for s in re.findall(r"^\s*server\s+(\S+?)[\s;]", upstream, re.M)]
    proxies = [n for n, s in services().items() if s.get("command", [None])[0] == "proxy"]
    assert len(proxies) >= 2
    assert sorted(servers) == sorted((name, compose_port(name)) for name in proxies)
    [listen] = re.findall(r"listen\s+(\d+);", nginx)
    assert services()["lb"]["ports"] == [f"{listen}:{listen}"]


def test_prometheus_scrapes_every_process_where_it_listens() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        host_port(target)
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    stillroom = {n for n, s in services().items() if image_name(s["image"]) in STILLROOM_IMAGES}
    expected = {(name, compose_port(name)) for name in stillroom | {"vllm"}}
    assert targets == expected


@pytest.mark.prometheus
def test_prometheus_accepts_its_configuration() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is missing (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    checked = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_services_reach_each_other_on_the_ports_they_listen_on() -> None:
    shared_env = compose()["x-stillroom"]["environment"]
    assert host_port(shared_env["STILLROOM_STUDENT_URL"]) == ("vllm", compose_port("vllm"))
    database = re.search(r"@([\w.-]+):(\d+)/", shared_env["STILLROOM_DATABASE_URL"])
    assert database is not None
    assert (database[1], int(database[2])) == ("postgres", 5432)
    for name, service in services().items():
        check = service.get("healthcheck", {}).get("test", [])
        for url in re.findall(r"http://[\w.:]+/\w+", " ".join(map(str, check))):
            assert host_port(url)[1] == compose_port(name), f"{name} checks {url}"


def test_kubernetes_services_and_probes_point_at_the_ports_containers_listen_on() -> None:
    for r in resources():
        if r["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = r["spec"]["template"]
        [c] = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if image_name(c["image"]) in STILLROOM_IMAGES or c["name"] == "vllm":
            assert set(ports.values()) == {listening_port(c["args"])}, c["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in c.get(probe, {}):
                assert c[probe]["httpGet"]["port"] in ports, f"{c['name']} {probe}"
        annotations = pod["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) in ports.values(), c["name"]
        [service] = [
            s
            for s in resources()
            if s["kind"] == "Service"
            and s["spec"]["selector"] == r["spec"]["selector"]["matchLabels"]
        ]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]


def test_kubernetes_student_urls_name_every_vllm_replica() -> None:
    replicas = resource("StatefulSet", "stillroom-vllm")
    service = resource("Service", "stillroom-vllm")
    assert replicas["spec"]["replicas"] >= 2
    assert replicas["spec"]["serviceName"] == "stillroom-vllm"
    assert service["spec"]["clusterIP"] == "None", "a headless Service names each pod"
    port = service["spec"]["ports"][0]["port"]
    names = [f"stillroom-vllm-{n}.stillroom-vllm" for n in range(replicas["spec"]["replicas"])]
    assert [host_port(url) for url in config_file()["student_urls"]] == [
        (name, port) for name in names
    ]
    assert "student_url" not in config_file()


def test_proxies_are_probed_for_liveness_and_readiness() -> None:
    proxy = container("proxy")
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert resource("Deployment", "stillroom-proxy")["spec"]["replicas"] >= 2
    autoscaler = resource("HorizontalPodAutoscaler", "stillroom-proxy")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "stillroom-proxy"


# --- the student: adapters, base model, GPU ------------------------------------------------


def test_compose_distiller_and_vllm_share_the_adapters_at_the_same_path() -> None:
    data_dir = compose()["x-stillroom"]["environment"]["STILLROOM_DATA_DIR"]
    mounts = {
        name: [str(v).split(":")[:2] for v in services()[name]["volumes"]]
        for name in ("distiller", "vllm")
    }
    [distiller_volume] = [v for v, target in mounts["distiller"] if target == data_dir]
    assert [distiller_volume, data_dir] in mounts["vllm"]


def test_kubernetes_distiller_and_vllm_share_the_adapters_at_the_same_path() -> None:
    data_dir = config_file()["data_dir"]
    for name in ("distiller", "vllm"):
        pod = next(
            r["spec"]["template"]["spec"]
            for r in resources()
            if r["kind"] in ("Deployment", "StatefulSet")
            and r["spec"]["template"]["spec"]["containers"][0]["name"] == name
        )
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == data_dir]
        assert claims[mount["name"]] == "stillroom-adapters", name
    claim = resource("PersistentVolumeClaim", "stillroom-adapters")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_distiller_trains_on_the_base_model_vllm_serves() -> None:
    shared_env = compose()["x-stillroom"]["environment"]
    assert services()["vllm"]["command"][0] == shared_env["STILLROOM_BASE_MODEL"]
    assert container("vllm")["args"][0] == config_file()["base_model"]


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_vllm_loads_adapters_at_run_time(where: str) -> None:
    if where == "compose":
        args = [str(t) for t in services()["vllm"]["command"]]
        env = services()["vllm"]["environment"]
    else:
        args = container("vllm")["args"]
        env = {e["name"]: e.get("value") for e in container("vllm")["env"]}
    assert "--enable-lora" in args
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    max_rank = options(args)["--max-lora-rank"]
    assert max_rank is not None
    assert int(max_rank) >= Settings.model_fields["lora_rank"].default


def test_one_distiller_with_a_gpu() -> None:
    [device] = services()["distiller"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert "replicas" not in services()["distiller"]["deploy"]
    deployment = resource("Deployment", "stillroom-distiller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert container("distiller")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container("vllm")["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- volumes, mounts, build context, images ------------------------------------------------


def test_compose_volumes_are_defined_and_bind_mounts_exist() -> None:
    declared = set(compose()["volumes"])
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_grafana_is_provisioned_from_the_repository() -> None:
    mounts = dict(str(v).split(":")[:2] for v in services()["grafana"]["volumes"])
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    for source in ("../grafana/provisioning", "../grafana/dashboards"):
        assert (DEPLOY / source).is_dir(), source
    dashboards = mounts["../grafana/dashboards"]
    providers = [
        provider
        for path in sorted((ROOT / "grafana/provisioning/dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers
    assert all(p["options"]["path"].startswith(dashboards) for p in providers)
    assert list((ROOT / "grafana/dashboards").glob("*.json"))
    datasources = [
        source
        for path in sorted((ROOT / "grafana/provisioning/datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    prometheus_port = int(services()["prometheus"]["ports"][0].rpartition(":")[2])
    [prometheus] = [s for s in datasources if s["type"] == "prometheus"]
    assert host_port(prometheus["url"]) == ("prometheus", prometheus_port)
    # Grafana derives $__rate_interval from the scrape interval it is told.
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape


def excluded_by_dockerignore(path: str) -> bool:
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch(path, pattern) or fnmatch(path.split("/")[0], pattern):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_in_the_build_context(dockerfile: Path) -> None:
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
            assert not excluded_by_dockerignore(source), f"{source} is in .dockerignore"
    # Every package the project installs is copied.
    packages = {line.split()[0] for line in copies}
    assert {"core", "router", "distiller", "proxy"} <= packages


def test_compose_builds_with_the_dockerfiles() -> None:
    builds = {s["build"]["dockerfile"] for s in services().values() if "build" in s}
    assert builds == {str(p.relative_to(ROOT)) for p in DOCKERFILES}
    for s in services().values():
        if "build" in s:
            assert (DEPLOY / s["build"]["context"]).resolve() == ROOT


def pinned(image: str) -> bool:
    tag = image.rpartition("/")[2].partition(":")[2]
    return bool(tag) and tag != "latest" and any(ch.isdigit() for ch in tag)


def test_every_image_is_pinned_to_a_version() -> None:
    images = [str(s["image"]) for s in services().values()]
    for dockerfile in DOCKERFILES:
        images += re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.MULTILINE)
    tags = {i["name"]: i["newTag"] for i in kustomization()["images"]}
    for c in containers():
        image = c["image"]
        images.append(f"{image}:{tags[image]}" if image in tags else image)
    assert [i for i in images if not pinned(i)] == []


def test_stillroom_images_carry_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose_images = {
        str(s["image"]) for s in services().values() if image_name(s["image"]) in STILLROOM_IMAGES
    }
    assert compose_images == {f"{name}:{version}" for name in STILLROOM_IMAGES}
    assert {i["newTag"] for i in kustomization()["images"]} == {version}
