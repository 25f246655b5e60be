"""The deployment files, each checked by the tool its platform would use: Kubernetes'
schemas (offline), yamllint, the Compose specification, promtool and hadolint (the
systemd unit: test_install.py, where the install steps put what it names)."""

from __future__ import annotations

import re
import shutil

import yaml
from deploy_helpers import DEPLOY, run_tool, tool

from bridge.core.settings import SETTINGS, load
from bridge.serve.processes import ROOT
from bridge.serve.server import check_or_exit

KUBERNETES = DEPLOY / "kubernetes"
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
SETTING_ENVS = {setting.env for setting in SETTINGS}


def manifests() -> list[dict]:
    return [document for path in sorted(KUBERNETES.glob("*.yaml"))
            if path.name != "kustomization.yaml"
            for document in yaml.safe_load_all(path.read_text()) if document]


def by_kind(kind: str) -> dict:
    (found,) = [document for document in manifests() if document["kind"] == kind]
    return found


def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas():
    files = sorted(str(path) for path in KUBERNETES.glob("*.yaml")
                   if path.name != "kustomization.yaml")
    result = run_tool(tool("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(files)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_yaml_file_passes_yamllint():
    result = run_tool(tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deployment_drains_before_kubernetes_gives_up_on_it():
    """preStop pause + drain delay + grace period fit in terminationGracePeriodSeconds."""
    config = by_kind("ConfigMap")["data"]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(config["BRIDGE_DRAIN_DELAY"]) / 1000
    grace = int(config["BRIDGE_GRACEFUL_TIMEOUT"]) / 1000
    assert pod["terminationGracePeriodSeconds"] > pause + drain + grace
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"]


def test_the_configmap_sets_only_real_settings_and_the_key_comes_from_a_file():
    config = by_kind("ConfigMap")["data"]
    variables = {name for name in config if name.startswith("BRIDGE_")}
    assert variables <= SETTING_ENVS
    assert "BRIDGE_API_KEY" not in config  # the key is a Secret, mounted as a file
    mounts = {mount["mountPath"] for mount in
              by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert config["BRIDGE_API_KEY_FILE"].rsplit("/", 1)[0] in mounts
    assert {config["BRIDGE_CACHE_DIR"], config["BRIDGE_STATE_DIR"]} <= mounts


def test_the_configmap_passes_the_bridges_own_start_up_checks(tmp_path):
    """Its settings parse and its plugin.lua loads with both hooks, as at a pod's start."""
    config = dict(by_kind("ConfigMap")["data"])
    script = tmp_path / "plugin.lua"
    script.write_text(config.pop("plugin.lua"))
    key = tmp_path / "api-key"
    key.write_text(by_kind("Secret")["stringData"]["api-key"])
    config.update(BRIDGE_LUAJIT_SCRIPT=str(script), BRIDGE_API_KEY_FILE=str(key))
    settings = load([], config)
    assert settings.enable_luajit and settings.enable_shared_mode and settings.enable_cache
    check_or_exit(settings)  # exits 2 with a message if the script does not load


def test_the_compose_file_is_a_valid_compose_file():
    docker = shutil.which("docker")
    if docker and run_tool(docker, "compose", "version").returncode == 0:
        result = run_tool(docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"),
                          "config", "--quiet")
    else:  # no Compose plugin: the Compose specification's schema, shipped offline
        result = run_tool(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                          str(DEPLOY / "docker-compose.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    # Compose v2, and says so: a project name, no `version:` (v2 warns it is obsolete)
    assert "Compose v2" in text.split("\nname:")[0] and "version" not in compose
    assert compose["name"] == "deepseek-ollama-bridge"
    assert set(compose["services"]) == {"ollama", "bridge", "prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # files the compose file mounts exist
                assert (DEPLOY / source).exists(), source


def test_the_prometheus_configuration_passes_promtool():
    result = run_tool(tool("promtool"), "check", "config", "--syntax-only",
                      str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_passes_hadolint_and_keeps_the_essentials():
    dockerfile = (ROOT / "Dockerfile").read_text()
    result = run_tool(tool("hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001", final_stage, re.M)  # not root
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", final_stage, re.M)
    assert re.search(r'^CMD \["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"\]$',
                     final_stage, re.M)  # exec form: gunicorn is PID 1 and gets SIGTERM
    assert "BRIDGE_LISTEN=0.0.0.0:3000" in final_stage
    assert re.search(r"^VOLUME .*cache.*state", final_stage, re.M)
