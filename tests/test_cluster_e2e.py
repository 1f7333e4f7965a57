"""A multi-node Ray cluster on this machine: S3 end to end, `ray job submit`, and the fault drills.

One cluster serves every test here (module scope): a head with no CPUs and three worker nodes of
one CPU each (`ray start` processes with their own ports and temp dirs, token auth on), a
SeaweedFS S3 server and an MLflow server, all on 127.0.0.1. Shards live in S3; the nodes get the
S3 keys from their environment, as real nodes get them from an instance role, and the jobs never
see them. Every process started here is stopped by PID (never `ray stop`, which would stop other
people's Ray too).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_MODEL, free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "zxvad-e2e"
WORKER_NODES = 3  # two DDP workers, plus one node of spare capacity for the node-failure drill
TINY = [*TINY_MODEL, "model.disc_width=4", "model.backbone=mnasnet1_0", "train.batch_size=2",
        "train.num_workers=2", "train.log_every=2", "data.shuffle_buffer=8", "eval.targets={}",
        "train.keep_checkpoints=100"]


def _wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status < 500
    except Exception:
        return False


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, by PID."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@dataclass
class Stack:
    """Handles of the simulated cluster; ``env`` is what a user's shell would hold."""

    tmp: Path
    env: dict
    node_env: dict
    s3_url: str
    secret_key: str
    token: str
    dashboard: str
    mlflow_uri: str
    weed_args: list
    procs: dict = field(default_factory=dict)  # name -> Popen
    raylets: dict = field(default_factory=dict)  # node name -> raylet pid
    logs: list = field(default_factory=list)  # every job log fetched, for the secrets check

    def start(self, name: str, args: list, env: dict, log: str) -> subprocess.Popen:
        out = open(self.tmp / log, "ab")
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=self.node_env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def _start_weed(stack: Stack) -> None:
    stack.start("s3", [str(BIN / "weed"), "server", *stack.weed_args], stack.node_env, "weed.log")
    _wait_for(lambda: _s3_ready(stack), 60, "the SeaweedFS S3 server answering")


def _s3_ready(stack: Stack) -> bool:
    try:
        s3 = stack.s3()
        if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="health", Body=b"ok")
        return True
    except Exception:
        return False


def _ray_processes_under(tmp: Path) -> list[int]:
    """PIDs of the Ray processes of this test's nodes: their command lines name our temp dir."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(tmp) in part for part in proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _raylet_of(node_tmp: Path) -> int:
    import psutil

    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(str(node_tmp) in c for c in cmd):
            return proc.info["pid"]
    return 0


def _make_frames(root: Path, videos: int = 6, frames: int = 24) -> None:
    """Tiny frame folders: a red block walking over a grey floor (class 'walk')."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for v in range(videos):
        folder = root / "walk" / f"video{v:02d}"
        folder.mkdir(parents=True)
        x, y = rng.integers(4, 40, 2)
        for t in range(frames):
            img = np.full((48, 48, 3), 80 + 12 * v, np.uint8)
            cx, cy = (x + t) % 40, (y + t // 2) % 40
            img[cy:cy + 8, cx:cx + 6] = (220, 60, 60)
            Image.fromarray(img).save(folder / f"{t:04d}.png")


def _node_flags(node_tmp: Path) -> list[str]:
    """Flags of one `ray start`: its own temp dir and ports, so nodes (and other people's Ray
    instances on this machine) never collide."""
    nm, om, agent, agent_grpc, env_agent, metrics = free_ports(6)
    return ["--block", "--node-ip-address=127.0.0.1", f"--temp-dir={node_tmp}",
            f"--node-manager-port={nm}", f"--object-manager-port={om}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
            "--object-store-memory=150000000", "--disable-usage-stats"]


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="zxc", dir="/tmp"))  # short: Ray's socket paths are capped
    secret_key = "e2e" + secrets.token_hex(16)
    token = secrets.token_hex(32)
    (gcs, dash, client, s3p, s3g, mp, mg, vp, vg, fp, fg, mlp) = free_ports(12)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("RAY_", "AWS_", "MLFLOW_")) and k != "PYTHONPATH"}
    base["PATH"] = f"{BIN}:{base.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT)
    s3_url = f"http://127.0.0.1:{s3p}"
    # What every node has (an instance role's keys, the cluster token); jobs never carry these.
    node_env = dict(base, AWS_ACCESS_KEY_ID="e2eaccess", AWS_SECRET_ACCESS_KEY=secret_key,
                    AWS_REGION="us-east-1", AWS_ENDPOINT_URL=s3_url, RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN=token, RAY_health_check_period_ms="1000",
                    RAY_health_check_failure_threshold="3", RAY_USAGE_STATS_ENABLED="0",
                    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_S3_ENDPOINT_URL=s3_url)
    # The user's shell: the token for job submission, nothing else secret.
    env = dict(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ADDRESS=f"http://127.0.0.1:{dash}")
    (tmp / "weed").mkdir()
    (tmp / "s3.json").write_text(json.dumps({"identities": [{
        "name": "e2e", "credentials": [{"accessKey": "e2eaccess", "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    weed_args = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={tmp / 'weed'}", f"-master.port={mp}",
                 f"-master.port.grpc={mg}", f"-volume.port={vp}", f"-volume.port.grpc={vg}", "-filer",
                 f"-filer.port={fp}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3p}",
                 f"-s3.port.grpc={s3g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 f"-s3.config={tmp / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=8",
                 "-metricsPort=0", "-master.telemetry=false"]
    stack = Stack(tmp, env, node_env, s3_url, secret_key, token, f"http://127.0.0.1:{dash}",
                  f"http://127.0.0.1:{mlp}", weed_args)
    try:
        _start_weed(stack)
        stack.start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlp),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow-server.db'}",
                               "--artifacts-destination", f"s3://{BUCKET}/mlflow"], node_env, "mlflow.log")
        stack.start("head", [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=0",
                             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                             f"--ray-client-server-port={client}", *_node_flags(tmp / "head")],
                    node_env, "head.log")
        _wait_for(lambda: _http_ok(f"{stack.dashboard}/api/gcs_healthz"), 120, "the Ray head")
        for i in range(WORKER_NODES):
            stack.start(f"node{i}", [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                                     *_node_flags(tmp / f"node{i}")], node_env, f"node{i}.log")
        for i in range(WORKER_NODES):
            stack.raylets[f"node{i}"] = _wait_for(lambda i=i: _raylet_of(tmp / f"node{i}"), 120,
                                                  f"the raylet of node{i}")
        _wait_for(lambda: _http_ok(stack.mlflow_uri + "/health"), 120, "the MLflow server")
        _wait_for(lambda: _alive_worker_nodes(stack) == WORKER_NODES, 120, "all worker nodes joining")
        _upload_shards(stack)
        yield stack
    finally:
        for name, proc in reversed(list(stack.procs.items())):
            _kill_tree(proc.pid)
        for pid in _ray_processes_under(tmp):  # workers re-parented after their raylet died
            _kill_tree(pid)
        shutil.rmtree(tmp, ignore_errors=True)


def _alive_worker_nodes(stack: Stack) -> int:
    out = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", stack.dashboard, "--format", "json",
                          "--filter", "state=ALIVE"], env=stack.env, capture_output=True, text=True, timeout=60)
    try:
        nodes = json.loads(out.stdout)
    except json.JSONDecodeError:
        return 0
    return sum(1 for n in nodes if not n.get("is_head_node"))


def _upload_shards(stack: Stack) -> None:
    """Frame folders -> shards written straight to s3:// by shards.build, as a user would."""
    raw = stack.tmp / "raw"
    _make_frames(raw)
    out = subprocess.run([sys.executable, "-m", "shards.build", "videofolder", "--root", str(raw),
                          "--out", f"s3://{BUCKET}/shards/walk", "--split", "train", "--clip-len", "8",
                          "--size", "32x32", "--quiet"], env={**stack.node_env, "RAY_ADDRESS": ""},
                         capture_output=True, text=True, timeout=300, cwd=stack.tmp)
    assert out.returncode == 0, out.stderr[-2000:]


def _submit(stack: Stack, job_id: str, overrides: list[str], env_vars: dict | None = None) -> None:
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": stack.s3_url, "AWS_REGION": "us-east-1",
                                "MLFLOW_TRACKING_URI": stack.mlflow_uri, **(env_vars or {})}}
    argv = [str(BIN / "ray"), "job", "submit", "--address", stack.dashboard, "--submission-id", job_id,
            "--no-wait", "--runtime-env-json", json.dumps(runtime_env), "--",
            "python", "-m", "zxvad.train", "--config", "demo"]
    shards = f"s3://{BUCKET}/shards/walk"
    for item in [*TINY, f"data.train_shards={shards}", f"data.donor_shards={shards}",
                 f"train.storage_path=s3://{BUCKET}/ray_results", f"tracking.run_name={job_id}",
                 *overrides]:
        argv += ["--set", item]
    for _ in range(30):  # the head's job agent takes a moment after the head answers
        out = subprocess.run(argv, env=stack.env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 or "No available agent" not in out.stderr:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _status(stack: Stack, job_id: str) -> str:
    """SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING or UNKNOWN, from `ray job status`'s words
    ("Job 'x' succeeded", "Job 'x' failed", "Job 'x' was stopped", "Status for job 'x': RUNNING")."""
    out = subprocess.run([str(BIN / "ray"), "job", "status", "--address", stack.dashboard, job_id],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    ended = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", text)
    if ended:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
    running = re.search(r"Status for job '[^']+': (?:JobStatus\.)?(\w+)", text)
    return running.group(1).upper() if running else "UNKNOWN"


def _logs(stack: Stack, job_id: str) -> str:
    out = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", stack.dashboard, job_id],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    stack.logs.append(out.stdout)
    return out.stdout


def _wait_job(stack: Stack, job_id: str, timeout: float = 300) -> tuple[str, str]:
    status = _wait_for(lambda: (s := _status(stack, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                       timeout, f"job {job_id} ending", interval=2)
    return status, _logs(stack, job_id)


def _while_running(stack: Stack, job_id: str, check):
    """``check`` wrapped so that waiting stops with the job's log when the job has ended."""
    def wrapped():
        value = check()
        if not value and _status(stack, job_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
            raise AssertionError(f"job {job_id} ended early:\n{_logs(stack, job_id)[-3000:]}")
        return value
    return wrapped


def _registered_checkpoint(stack: Stack, run: str) -> bool:
    """The controller's snapshot in S3 names a checkpoint: a restart would resume from it (the
    upload of a checkpoint folder comes a little before its registration)."""
    try:
        body = stack.s3().get_object(Bucket=BUCKET, Key=f"ray_results/{run}/checkpoint_manager_snapshot.json")
        return "checkpoint_" in body["Body"].read().decode()
    except Exception:  # not written yet
        return False


def _checkpoint_steps(stack: Stack, run: str) -> dict[str, int]:
    """Checkpoint folder -> step, read from the meta.json each checkpoint holds in S3."""
    s3 = stack.s3()
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"ray_results/{run}/")
    steps = {}
    for item in listing.get("Contents", []):
        key = item["Key"]
        if key.endswith("/meta.json") and "/checkpoint_" in key:
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            steps[key.split("/")[-2]] = json.loads(body)["step"]
    return steps


def _train_workers(stack: Stack) -> dict[int, str]:
    """RayTrainWorker pid -> the node (of ours) whose raylet started it."""
    import psutil

    by_raylet = {pid: node for node, pid in stack.raylets.items()}
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "RayTrainWorker" in cmd and proc.info["ppid"] in by_raylet:
            found[proc.info["pid"]] = by_raylet[proc.info["ppid"]]
    return found


def _mlflow_run(stack: Stack, run_name: str, uri: str | None = None):
    import mlflow

    from zxvad.names import RUN_NAME_TAG

    client = mlflow.MlflowClient(tracking_uri=uri or stack.mlflow_uri)
    experiment = client.get_experiment_by_name("zxvad-demo")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    assert len(runs) == 1, f"expected one MLflow run named {run_name}, found {len(runs)}"
    return client, runs[0]


def _printed_steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"step (\d+)/\d+ \|", log)]


# ----------------------------------------------------------------------------- the run and a lost node


def test_multinode_run_from_s3_survives_losing_a_node(stack):
    steps, every = 100, 10  # ~1 min of training on 2 busy cores: the kill lands mid-run
    began = time.time()
    _submit(stack, "nodeloss", [f"train.steps={steps}", f"train.checkpoint_every={every}",
                                "train.max_failures=2", f"train.keep_checkpoints={steps // every}"])
    workers = _wait_for(_while_running(stack, "nodeloss", lambda: len(w := _train_workers(stack)) == 2 and w),
                        240, "two RayTrainWorkers")
    assert len(set(workers.values())) == 2, f"both DDP workers landed on one node: {workers}"
    _wait_for(_while_running(stack, "nodeloss", lambda: _registered_checkpoint(stack, "nodeloss")), 240,
              "a first checkpoint in S3, registered by Ray Train's controller")
    victim = sorted(workers.values())[0]
    os.kill(stack.raylets[victim], signal.SIGKILL)  # the node is gone, as if its instance died

    status, log = _wait_job(stack, "nodeloss", timeout=420)
    wall = time.time() - began
    assert status == "SUCCEEDED", log[-3000:]
    resumed = re.findall(r"resumed from checkpoint at step (\d+)", log)
    assert resumed, "training did not resume from a checkpoint after the node died"
    resumed_at = int(resumed[-1])
    assert resumed_at % every == 0 and resumed_at >= every
    assert f"finished at step {steps}" in log

    saved = _checkpoint_steps(stack, "nodeloss")
    assert max(saved.values()) == steps
    assert set(range(every, steps + 1, every)) <= set(saved.values()), f"a checkpoint was lost: {saved}"
    # the last step printed before the restart: training done since the last checkpoint is lost
    after_kill = max(_printed_steps(log[:log.find("resumed from checkpoint")]), default=resumed_at)
    lost = max(after_kill - resumed_at, 0)
    print(f"\nsimulated multi-node run: {wall:.1f} s wall, node {victim} killed, resumed at step "
          f"{resumed_at}, {lost} steps lost (checkpoint_every={every})")

    survivors = set(_train_workers(stack).values())
    assert victim not in survivors

    client, run = _mlflow_run(stack, "nodeloss")
    history = client.get_metric_history(run.info.run_id, "loss/l_rec")
    assert max(m.step for m in history) == steps
    assert run.data.params["model.width"] == "4"


def test_s3_restart_mid_run_is_retried(stack):
    steps = 40
    _submit(stack, "s3restart", [f"train.steps={steps}", "train.checkpoint_every=10", "train.max_failures=3"])
    _wait_for(_while_running(stack, "s3restart", lambda: _checkpoint_steps(stack, "s3restart")), 240,
              "a first checkpoint in S3")
    _kill_tree(stack.procs["s3"].pid)
    time.sleep(3)
    _start_weed(stack)
    status, log = _wait_job(stack, "s3restart", timeout=360)
    assert status == "SUCCEEDED", log[-3000:]
    assert f"finished at step {steps}" in log
    assert max(_checkpoint_steps(stack, "s3restart").values()) == steps


# ----------------------------------------------------------------------------- MLflow down at start


def test_mlflow_down_fails_before_training(stack):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    _submit(stack, "mlflowdown", ["train.steps=4", f"tracking.tracking_uri={dead}",
                                  "tracking.on_unreachable=fail"])
    status, log = _wait_job(stack, "mlflowdown", timeout=180)
    assert status == "FAILED"
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and dead in errors[0] and "unreachable" in errors[0], log[-2000:]
    assert "RayTrainWorker" not in log and "step 1" not in log
    assert not _checkpoint_steps(stack, "mlflowdown")


def test_mlflow_down_with_local_fallback_trains(stack):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    _submit(stack, "mlflowlocal", ["train.steps=4", "train.checkpoint_every=4",
                                   f"tracking.tracking_uri={dead}", "tracking.on_unreachable=local"])
    status, log = _wait_job(stack, "mlflowlocal", timeout=300)
    assert status == "SUCCEEDED", log[-3000:]
    fallback = re.search(r"unreachable; logging to (sqlite:///\S+) instead", log)
    assert fallback, log[-2000:]
    client, run = _mlflow_run(stack, "mlflowlocal", uri=fallback.group(1))
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss/l_rec")} == {2, 4}


# ----------------------------------------------------------------------------- no secret anywhere


def test_no_secret_in_job_logs_mlflow_params_or_artifacts(stack):
    assert stack.logs, "the tests above fetched no job log"
    texts = list(stack.logs)
    client, run = _mlflow_run(stack, "nodeloss")
    texts += [f"{k}={v}" for k, v in run.data.params.items()]
    texts += [f"{k}={v}" for k, v in run.data.tags.items()]
    folder = Path(client.download_artifacts(run.info.run_id, "", str(stack.tmp / "artifacts")))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)
    for path in files:
        texts.append(path.read_bytes().decode("latin-1"))
    for secret in (stack.secret_key, stack.token):
        leaks = [t[:80] for t in texts if secret in t]
        assert not leaks, f"a secret leaked into {leaks}"
