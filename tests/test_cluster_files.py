"""The files under cluster/: they parse, name what a cluster needs, install this package, bind
nothing to every interface and hold no credentials."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from zxvad import config as config_lib

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "excludes", "pip", "uv", "conda", "env_vars",
                    "container", "image_uri", "config", "py_executable", "java_jars"}
SECRET_ENV_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                    "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "PGPASSWORD")
# What a leaked credential looks like in a text file.
CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}"),
    re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),  # AWS secret key shape
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),  # user:password@ in a URL
    re.compile(r"(?i)(password|passwd|secret|token)\s*[:=]\s*['\"][^'\"\s]{6,}['\"]"),
]


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _cluster_yaml() -> dict:
    (doc,) = _docs("ray-cluster.yaml")
    return doc


def _rayjob_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in _docs("rayjob.yaml")}


def _start_flags(command: str) -> dict[str, str]:
    """``--key=value`` flags of the ``ray start`` part of a shell command line."""
    words = shlex.split(command.split("ray start", 1)[1])
    return dict(w[2:].split("=", 1) if "=" in w else (w[2:], "") for w in words if w.startswith("--"))


def find_credentials(text: str) -> list[str]:
    """Snippets of ``text`` that look like credentials, or a secret variable given a value."""
    hits = [m.group(0) for p in CREDENTIAL_PATTERNS for m in p.finditer(text)]
    for name in SECRET_ENV_NAMES:
        # `NAME: value` or `NAME=value` or `- name: NAME` followed by `value: ...`
        hits += re.findall(rf"{name}\s*[:=]\s*['\"]?[^\s'\"$]+", text)
        hits += re.findall(rf"name:\s*{name}\s*\n\s*value:\s*\S+", text)
    return hits


# ----------------------------------------------------------------------------- ray up


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_cluster_yaml()))
    validate_config(prepared)  # raises jsonschema.ValidationError on a bad field
    assert prepared["provider"]["type"] == "aws"


def test_cluster_yaml_has_cpu_head_and_autoscaling_gpu_workers():
    cfg = _cluster_yaml()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not take training workers"
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "head should be a CPU type"
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu_families = {t["node_config"]["InstanceType"].split(".")[0] for t in workers.values()}
    assert {"g5", "p4d"} <= gpu_families
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, f"{name} must scale from 0"
    assert cfg["max_workers"] >= max(t["max_workers"] for t in workers.values())


def test_cluster_yaml_uses_instance_profiles_for_s3():
    for name, t in _cluster_yaml()["available_node_types"].items():
        assert t["node_config"].get("IamInstanceProfile"), f"{name}: no IAM instance profile"


def test_cluster_yaml_installs_this_package():
    cfg = _cluster_yaml()
    mounted = [remote for remote, local in cfg["file_mounts"].items() if local in (".", "./")]
    assert mounted, "the working tree is not copied to the nodes"
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert any(shlex.split(c)[-1] == mounted[0] for c in installs), installs
    assert (Path(CLUSTER.parent) / "pyproject.toml").exists()
    assert importlib.util.find_spec("zxvad.train") is not None


def test_cluster_yaml_dashboard_on_localhost_and_token_auth():
    cfg = _cluster_yaml()
    (head_start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    flags = _start_flags(head_start)
    assert "head" in flags
    assert flags["dashboard-host"] == "127.0.0.1"
    assert flags["num-cpus"] == "0"
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    token_mounts = [r for r in cfg["file_mounts"] if r.endswith(".ray/auth_token")]
    assert token_mounts, "nodes need the Ray token file"


# ----------------------------------------------------------------------------- KubeRay


def test_rayjob_manifest_fields():
    docs = _rayjob_docs()
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["shutdownAfterJobFinishes"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["name"] == "ray-head"
    (gpu_group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu_group["minReplicas"] == 0 <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_entrypoint_is_a_valid_paper_training_command():
    spec = _rayjob_docs()["RayJob"]["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["python", "-m", "zxvad.train"]
    assert importlib.util.find_spec(words[2]) is not None
    parser = argparse.ArgumentParser()
    config_lib.add_arguments(parser)
    args = parser.parse_args(words[3:])
    assert args.config == "paper"
    cfg = config_lib.load(args.config, args.overrides)  # every --set key and value is valid
    assert cfg.train.use_gpu and cfg.train.num_workers >= 2
    assert cfg.train.storage_path.startswith("s3://")
    assert cfg.data.train_shards.startswith("s3://")
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert not set(env) & set(SECRET_ENV_NAMES)


def test_rayjob_image_installs_this_package_and_s3_comes_from_irsa():
    docs = _rayjob_docs()
    cluster = docs["RayJob"]["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert len(images) == 1 and next(iter(images)).split("/")[-1].startswith("zxvad:")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0", dockerfile, re.M)
    assert re.search(r"^COPY .*pyproject\.toml", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*/home/ray/zxvad(\s|$)", dockerfile, re.M)
    accounts = {t["spec"]["serviceAccountName"] for t in templates}
    assert accounts == {docs["ServiceAccount"]["metadata"]["name"]}
    role = docs["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::")


def test_rayjob_network_policy_covers_the_ray_pods():
    docs = _rayjob_docs()
    selector = docs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]
    cluster = docs["RayJob"]["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items()


# ----------------------------------------------------------------------------- runtime env, MLflow


def test_runtime_env_is_valid_and_holds_no_secrets():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    assert set(env) <= RUNTIME_ENV_KEYS, set(env) - RUNTIME_ENV_KEYS
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert not set(env["env_vars"]) & set(SECRET_ENV_NAMES)


def _run_mlflow_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run mlflow-server.sh with a stand-in `mlflow` that prints its arguments."""
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    clean["PATH"] = f"{fake.parent}:{clean['PATH']}"
    return subprocess.run(["bash", str(CLUSTER / "mlflow-server.sh")], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_mlflow_server_defaults_to_localhost_postgres_and_s3(tmp_path):
    out = _run_mlflow_script(tmp_path, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db:5432/mlflow",
                             MLFLOW_ARTIFACTS_DESTINATION="s3://bucket/zxvad/mlflow")
    assert out.returncode == 0, out.stderr
    args = out.stdout.split("\n")
    assert args[0] == "server"
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--backend-store-uri") + 1] == "postgresql://mlflow@db:5432/mlflow"
    assert args[args.index("--artifacts-destination") + 1] == "s3://bucket/zxvad/mlflow"


@pytest.mark.parametrize("env, message", [
    ({}, "MLFLOW_BACKEND_STORE_URI is not set"),
    ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///m.db", "MLFLOW_ARTIFACTS_DESTINATION": "s3://b"},
     "expected a postgresql:// URI"),
    ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:hunter22@db/m", "MLFLOW_ARTIFACTS_DESTINATION": "s3://b"},
     "holds a password"),
    ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u@db/m", "MLFLOW_ARTIFACTS_DESTINATION": "/srv/art"},
     "expected s3://bucket/prefix"),
])
def test_mlflow_server_refuses_bad_settings_in_one_line(tmp_path, env, message):
    out = _run_mlflow_script(tmp_path, **env)
    assert out.returncode == 2
    assert out.stdout == ""  # mlflow was never started
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "hunter22" not in lines[0]


# ----------------------------------------------------------------------------- every file


def _cluster_files() -> list[Path]:
    files = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
    assert {"ray-cluster.yaml", "rayjob.yaml", "runtime-env.yaml", "mlflow-server.sh"} <= {p.name for p in files}
    return files


def test_nothing_binds_every_interface_by_default():
    for path in _cluster_files():
        text = path.read_text()
        assert "0.0.0.0" not in text, f"{path.name} binds 0.0.0.0"
        assert not re.search(r"(host|bind)[\w-]*[=: ]+['\"]?::['\"]?(\s|$)", text), path.name


def test_no_credentials_in_cluster_files():
    for path in _cluster_files():
        assert find_credentials(path.read_text()) == [], path.name


@pytest.mark.parametrize("leak", [
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "key: AKIAIOSFODNN7EXAMPLE",
    "MLFLOW_TRACKING_URI: http://admin:hunter22@mlflow:5000",
    "env_vars:\n  AWS_SECRET_ACCESS_KEY: abc123",
    "- name: RAY_AUTH_TOKEN\n  value: 0123456789abcdef",
    'token: "a1b2c3d4e5f6"',
])
def test_credential_check_catches_leaks(leak):
    assert find_credentials(leak)
