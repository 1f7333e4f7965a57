"""zxvad.train and zxvad.evaluate end to end on a local Ray with 2 DDP workers, at a tiny size.

One Ray instance (started in this process, stopped by ray.shutdown) serves every test here:
a TorchTrainer.fit costs ~20-30 s of fixed time on 2 cores, so the tests are few and share it.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_MODEL

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "model.disc_width=4", "model.backbone=resnet50", "model.backbone_size=64", "train.batch_size=2", "train.num_workers=2",
        "train.log_every=2", "eval.batch_size=8", "eval.top_frames=2", "data.shuffle_buffer=8"]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """The synthetic demo domains at 32x32, sharded like `make demo` does it."""
    from shards.build import build
    from shards.demo import write_demo_domains

    root = tmp_path_factory.mktemp("demo")
    domains = write_demo_domains(root / "raw", seed=0)
    out = {}
    for name, (dataset, path) in domains.items():
        split = "train" if name == "source" else "test"
        build(dataset, path, root / "shards" / name, split=split, clip_len=12, overlap=4,
              size=(32, 32), codec="vp9", progress=False)
        out[name] = str(root / "shards" / name)
    return out


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    os.environ["RAY_DEDUP_LOGS"] = "0"  # the tests read each worker's lines
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    if started:
        ray.shutdown()


def _overrides(shards, tmp_path, steps, run_name, extra=()):
    return [*TINY, f"data.train_shards={shards['source']}", f"data.donor_shards={shards['source']}",
            f"eval.targets={{street: {shards['target-street']}, plaza: {shards['target-plaza']}}}",
            f"train.steps={steps}", f"train.checkpoint_every=4", "eval.eval_every=0",
            f"train.storage_path={tmp_path / 'ray_results'}", f"tracking.run_name={run_name}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def _checkpoints(run_dir):
    """Ray Train's checkpoint folders (not its checkpoint_manager_snapshot.json), oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())


def _argv(overrides):
    argv = ["--config", "demo"]
    for item in overrides:
        argv += ["--set", item]
    return argv


def _mlflow_run(tmp_path, run_name):
    import mlflow

    from zxvad.names import RUN_NAME_TAG

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("zxvad-demo")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    return client, runs


def test_chain_shards_train_checkpoint_evaluate_mlflow(demo_shards, local_ray, tmp_path, capsys):
    from zxvad import train

    rc = train.main(_argv(_overrides(demo_shards, tmp_path, steps=8, run_name="chain")))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "finished at step 8" in out
    assert "street" in out and "plaza" in out and "mean" in out

    checkpoints = _checkpoints(tmp_path / "ray_results" / "chain")
    assert checkpoints, "no checkpoint was written"
    final = checkpoints[-1]
    assert json.loads((final / "meta.json").read_text())["step"] == 8
    report = json.loads((final / "eval" / "results.json").read_text())
    assert set(report["targets"]) == {"street", "plaza"}
    assert (final / "eval" / "street-curves.png").stat().st_size > 1000

    # the offline evaluation of the same checkpoint gives the same AUCs
    from zxvad import evaluate

    rc = evaluate.main(["--checkpoint", str(final), "--out", str(tmp_path / "eval"), "--no-plots"])
    assert rc == 0
    offline = json.loads((tmp_path / "eval" / "results.json").read_text())
    for name in ("street", "plaza"):
        assert offline["targets"][name]["auc"] == pytest.approx(report["targets"][name]["auc"], abs=1e-6)
        video = offline["targets"][name]["videos"][0]
        assert len(video["psnr"]) == len(video["score"]) == len(video["label"])
    assert offline["efficiency"]["params"] > 0 and offline["efficiency"]["inference_fps"] > 0

    client, runs = _mlflow_run(tmp_path, "chain")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model.width"] == "4" and run.data.params["loss.alpha_N"] == "0.5"
    assert {"loss/l_rec", "loss/l_g", "loss/l_d", "loss/l_n_total", "steps_per_s", "worker_peak_rss_mb",
            "auc/street", "auc/plaza", "auc/mean", "efficiency/params", "auc_gain/street",
            "auc_gain/plaza", "auc_gain/mean", "auc_baseline/copy_last/street",
            "auc_baseline/mean_T/plaza", "auc_baseline/linear/street"} <= set(run.data.metrics)
    assert run.data.metrics["auc/mean"] == pytest.approx(report["mean_auc"], abs=1e-6)
    # the baselines' AUCs recomputed from the per-frame PSNRs in results.json match MLflow's
    from zxvad.scoring import VideoResult, frame_auc

    videos = report["targets"]["street"]["videos"]
    copy_last = frame_auc([VideoResult(v["video_id"], np.array(v["baseline_psnr"]["copy_last"]),
                                       np.array(v["labels_all"])) for v in videos], 4)
    assert run.data.metrics["auc_baseline/copy_last/street"] == pytest.approx(copy_last, abs=1e-6)
    assert offline["targets"]["street"]["baseline_auc"]["copy_last"] == pytest.approx(copy_last, abs=1e-6)
    assert "copy_last" in out and "gain" in out
    history = client.get_metric_history(run.info.run_id, "loss/l_rec")
    assert sorted({m.step for m in history}) == [2, 4, 6, 8]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "evaluation"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/street-curves.png" in plots and "evaluation/results.json" in plots
    models = mlflow_logged_models(client, run)
    assert models, "the final G was not logged as an MLflow model"


def mlflow_history(tmp_path, run, key):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.get_metric_history(run.info.run_id, key)


def mlflow_logged_models(client, run):
    import mlflow

    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'",
                                        output_format="list")
    return [m for m in found if m.name == "generator"]


def test_resume_continues_the_same_run(demo_shards, local_ray, tmp_path, capsys):
    from zxvad import train

    assert train.main(_argv(_overrides(demo_shards, tmp_path, 4, "resume", ["eval.targets={}"]))) == 0
    capsys.readouterr()
    assert train.main(_argv(_overrides(demo_shards, tmp_path, 8, "resume", ["eval.targets={}"]))) == 0
    out = capsys.readouterr().out
    assert "finished at step 8" in out
    client, runs = _mlflow_run(tmp_path, "resume")
    assert len(runs) == 1, "a resumed run must log into the same MLflow run"
    restarts = client.get_metric_history(runs[0].info.run_id, "resumed_from_step")
    assert [m.value for m in restarts] == [4]
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/l_rec"))
    assert steps == [2, 4, 6, 8]


def _train_workers(since: float):
    """This run's Ray Train worker processes: descendants of this test process (other Ray
    instances on the machine are not ours to kill) started after ``since`` (earlier runs'
    workers may linger a moment), alive."""
    import psutil

    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if ("RayTrainWorker" in " ".join(proc.cmdline()) and proc.create_time() >= since
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_killed_worker_resumes_from_last_checkpoint(demo_shards, local_ray, tmp_path, capsys):
    from zxvad import train

    steps, every = 200, 20  # ~30-60 s of training: the kill lands well before the end
    overrides = _overrides(demo_shards, tmp_path, steps, "killed",
                           ["eval.targets={}", "train.max_failures=2", f"train.checkpoint_every={every}"])
    result = {}
    began = time.time()
    thread = threading.Thread(target=lambda: result.setdefault("rc", train.main(_argv(overrides))))
    thread.start()
    run_dir = tmp_path / "ray_results" / "killed"
    # Kill only once Ray Train's controller has registered a checkpoint: it writes its snapshot
    # (which names the checkpoints it knows) after the workers' report, a little later.
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (snapshot.exists() and "checkpoint_" in snapshot.read_text()):
        time.sleep(0.2)
    assert snapshot.exists(), "no checkpoint was registered before the deadline"
    _, runs = _mlflow_run(tmp_path, "killed")
    logged = mlflow_history(tmp_path, runs[0], "loss/l_rec")
    workers = _train_workers(began)
    assert workers, "no RayTrainWorker process found"
    workers[0].kill()
    killed_at = max(m.step for m in logged)
    assert killed_at < steps, "training ended before the kill: the test proves nothing"
    thread.join(timeout=400)
    assert not thread.is_alive()
    out = capsys.readouterr().out
    assert result["rc"] == 0, out
    assert f"finished at step {steps}" in out
    client, runs = _mlflow_run(tmp_path, "killed")
    restarts = client.get_metric_history(runs[0].info.run_id, "resumed_from_step")
    assert restarts, "the killed worker group was not restarted from a checkpoint"
    assert all(m.value > 0 and m.value % every == 0 for m in restarts)  # a checkpoint step
    saved = [json.loads((c / "meta.json").read_text())["step"] for c in _checkpoints(run_dir)]
    assert max(saved) == steps


@pytest.mark.parametrize("override, message", [
    ("loss.alpha_Q=1", "config key 'loss.alpha_Q': unknown key"),
    ("data.train_shards=/nonexistent/shards", "/nonexistent/shards"),
    ("data.train_shards=s3://zxvad-missing/shards", "s3://zxvad-missing/shards"),
])
def test_bad_input_fails_before_any_ray_worker(override, message, tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="y", AWS_MAX_ATTEMPTS="1", RAY_ADDRESS="")
    began = time.time()
    proc = subprocess.run([sys.executable, "-m", "zxvad.train", "--config", "demo", "--set", override,
                           "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr
    assert time.time() - began < 60
