"""tune.space and tune.sweep: sweep-file validation before Ray, variants and seeds, and the demo
sweep end to end (ASHA stopping, MLflow runs, tune.compare, interrupt and resume).

The end-to-end test runs ``python -m tune.sweep`` as a subprocess, as a user would: it is
interrupted with SIGINT (Ctrl+C) once its first trial has ended and then rerun. Each run starts
its own local Ray (one at a time) and stops it on exit; this module starts no other Ray.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tune import space
from tune.space import SweepError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, body: dict, name="s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


BASE = {"name": "t", "base": "demo", "space": {"loss.alpha_n": {"loguniform": [0.1, 10.0]}},
        "search": "random", "samples": 3}


@pytest.mark.parametrize("change, message", [
    ({"space": {"loss.alpha_Q": {"choice": [1.0]}}},
     "key 'space.loss.alpha_Q' is unknown: config key 'loss.alpha_Q': unknown key"),
    ({"space": {"nope.x": {"choice": [1]}}}, "unknown section 'nope'"),
    ({"space": {"loss.alpha_n": {"loguniform": [10.0, 0.1]}}}, "empty range"),
    ({"space": {"loss.alpha_n": {"uniform": [1.0, 1.0]}}}, "empty range"),
    ({"space": {"model.backbone": {"choice": []}}}, "empty choice"),
    ({"space": {"loss.alpha_n": {"loguniform": [0.0, 1.0]}}}, "low must be above 0"),
    ({"space": {"loss.alpha_n": {"uniform": [-1.0, 1.0]}}}, "config key 'loss.alpha_n' = -1.0: must be 0 or more"),
    ({"space": {"train.steps": {"uniform": [1, 10]}}}, "not a float key"),
    ({"space": {"train.steps": {"choice": ["many"]}}}, "config key 'train.steps': expected int, got 'many'"),
    ({"space": {"model.backbone": {"choice": ["vgg"]}}}, "model.backbone' = 'vgg': must be one of"),
    ({"space": {"loss.alpha_n": {"normal": [0, 1]}}}, "expected one of {loguniform"),
    ({"space": {"train.seed": {"choice": [1, 2]}}}, "is set by seeds"),
    ({"space": {"model.width,model.memory_dim": {"grid": [[8, 64], [8]]}}}, "expected a list of 2 values"),
    ({"space": {"model.width": {"grid": [8]}}}, "must equal 8 * model.width"),
    ({"metric": "auc/ped9"}, "key 'metric' = 'auc/ped9' is not reported by training (known: auc/mean, auc/ped2, auc/street, "
     "auc/plaza, auc/real, auc_gain/mean, auc_gain/ped2, auc_gain/street, auc_gain/plaza, auc_gain/real)"),
    ({"metric": "loss/l_g"}, "is not reported by training"),
    ({"mode": "best"}, "key 'mode'"),
    ({"search": "bayes"}, "key 'search' = 'bayes': expected one of random, grid, optuna"),
    ({"search": "grid"}, "is a range, which a grid cannot enumerate"),
    ({"scheduler": "hyperband"}, "key 'scheduler.type' = 'hyperband': expected one of asha, fifo"),
    ({"scheduler": {"type": "asha", "grace": 1}}, "key 'scheduler.grace' is unknown"),
    ({"scheduler": "asha"}, "asha: trials have 1 evaluation round(s)"),
    ({"seeds": 0}, "key 'seeds' = 0: expected an integer >= 1"),
    ({"samples": "3"}, "key 'samples'"),
    ({"resources": {"workers": 0}}, "resources.workers"),
    ({"resources": {"gpu": 1}}, "key 'resources.gpu' is unknown"),
    ({"set": {"train.stepz": 3}}, "config key 'train.stepz': unknown key"),
    ({"base": "nope-preset"}, "config 'nope-preset': no such file or preset"),
    ({"name": "bad name"}, "key 'name'"),
    ({"colour": "red"}, "key 'colour' is unknown"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_key(tmp_path, change, message):
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(SweepError) as err:
        space.load(str(path))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"sweep '{path}'")
    assert message in text, text


def test_optuna_rules(tmp_path):
    try:
        import optuna  # noqa: F401
        expected = "seeds' > 1 needs search: random or grid"
    except ImportError:
        expected = "'optuna' needs the optuna package"
    with pytest.raises(SweepError, match=expected):
        space.load(str(_write(tmp_path, {**BASE, "search": "optuna", "seeds": 2})))


def test_variants_cross_grids_draw_choices_and_repeat_seeds(tmp_path):
    body = {"name": "v", "base": "demo", "search": "random", "samples": 2, "seeds": 3,
            "space": {"loss.alpha_n": {"loguniform": [0.1, 10.0]},
                      "model.backbone": {"choice": ["alexnet", "resnet50"]},
                      "data.fraction": {"grid": [0.25, 1.0]},
                      "model.width,model.memory_dim": {"grid": [[4, 32], [8, 64]]}}}
    sweep = space.load(str(_write(tmp_path, body)))
    variants = sweep.variants()
    assert len(variants) == 2 * 2 * 2 * 3  # samples x fraction grid x width grid x seeds
    assert variants == sweep.variants()  # drawn with search_seed: reproducible
    configs = {}
    for v in variants:
        configs.setdefault(v["config_id"], []).append(v)
    assert len(configs) == 8 and all(len(vs) == 3 for vs in configs.values())
    for vs in configs.values():  # the seeds of one configuration train the very same values
        assert [v["seed"] for v in vs] == [0, 1, 2]
        assert all(v["params"] == vs[0]["params"] for v in vs)
    for v in variants:
        assert 0.1 <= v["params"]["loss.alpha_n"] <= 10.0
        assert v["params"]["model.memory_dim"] == 8 * v["params"]["model.width"]
    cfg = sweep.trial_config(variants[4]["params"], 2)
    assert (cfg.train.seed, cfg.data.seed, cfg.model.backbone_seed) == (2, 2, 2)
    assert cfg.model.width == variants[4]["params"]["model.width"]


def test_grid_search_crosses_choices_and_overrides_apply(tmp_path):
    body = {"name": "g", "base": "demo", "search": "grid",
            "space": {"loss.alpha_m": {"choice": [0.01, 0.1]}, "loss.alpha_N": {"grid": [0.0, 0.5, 1.0]}}}
    sweep = space.load(str(_write(tmp_path, body)),
                       ["seeds=2", "train.steps=40", "resources.workers=2", "max_concurrent=1"])
    assert len(sweep.variants()) == 2 * 3 * 2
    assert sweep.seeds == 2 and sweep.max_concurrent == 1
    assert sweep.base.train.steps == 40 and sweep.base.train.num_workers == 2


def test_packaged_sweeps_validate():
    counts = {"demo": 4, "loss-weights": 16, "ti-fraction": 24, "paper-tables": 33}
    for name, count in counts.items():
        sweep = space.load(name)
        assert len(sweep.variants()) == count, name
    tables = space.load("paper-tables")
    pairs = {(v["params"]["data.train_shards"].rsplit("/", 1)[-1],
              v["params"]["data.donor_shards"].rsplit("/", 1)[-1]) for v in tables.variants()}
    assert ("shanghaitech-train", "jester-train") in pairs and ("hmdb51-train", "hmdb51-train") in pairs
    assert set(tables.base.eval.targets) == {"ped1", "ped2", "avenue"}
    assert tables.base.model.image_size == 256 and tables.base.train.use_gpu
    demo = space.load("demo")
    assert demo.scheduler.kind == "asha" and demo.eval_rounds == 3 and demo.max_concurrent == 1


def test_trial_paths_are_absolute_from_where_the_sweep_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = {**BASE, "set": {"data.train_shards": "shards/src", "eval.targets": {"a": "shards/a", "b": "s3://b/t"}},
            "space": {"data.donor_shards": {"choice": ["shards/donors", ""]}}}
    sweep = space.load(str(_write(tmp_path, body)))
    monkeypatch.chdir("/")  # Tune runs trials elsewhere
    cfg = sweep.trial_config({"data.donor_shards": "shards/donors"}, 0)
    assert cfg.data.train_shards == str(tmp_path / "shards" / "src")
    assert cfg.data.donor_shards == str(tmp_path / "shards" / "donors")
    assert cfg.eval.targets == {"a": str(tmp_path / "shards" / "a"), "b": "s3://b/t"}
    assert sweep.trial_config({"data.donor_shards": ""}, 0).data.donor_shards == ""


def test_eval_round_counts_evaluations():
    assert [space.eval_round(s, 12, 4) for s in (4, 8, 12)] == [1, 2, 3]
    assert space.eval_round(10, 10, 4) == 3 and space.eval_round(10, 10, 0) == 1


def test_cli_bad_file_fails_before_ray(tmp_path):
    path = _write(tmp_path, {**BASE, "space": {"loss.alpha_n": {"choice": []}}})
    began = time.time()
    proc = subprocess.run([sys.executable, "-m", "tune.sweep", "--config", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAY_ADDRESS=""))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep") and "empty choice" in lines[0]
    assert "Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "ray_results").exists()
    assert time.time() - began < 60


def test_cli_missing_shards_fail_before_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tune.sweep", "--config", "demo", "--set",
                           "data.train_shards=/nonexistent/shards"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, RAY_ADDRESS=""))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent/shards" in lines[0]
    assert "Ray" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- the demo sweep


REGISTERED = "zxvad-demo-g"


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory):
    """The packaged demo sweep on tiny demo shards, interrupted after its first trial, resumed.

    Returns the folder, the MLflow URI, the two runs' outputs and the trials the first run ended.
    """
    from shards.build import build
    from shards.demo import write_demo_domains

    root = tmp_path_factory.mktemp("sweep")
    shards = {}
    for name, (dataset, path) in write_demo_domains(root / "raw", seed=0).items():
        split = "train" if name == "source" else "test"
        build(dataset, path, root / "shards" / name, split=split, clip_len=12, overlap=4,
              size=(32, 32), codec="vp9", progress=False)
        shards[name] = root / "shards" / name
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "tune.sweep", "--config", "demo", "--out", str(root / "out"),
           "--set", f"data.train_shards={shards['source']}", "--set", f"data.donor_shards={shards['source']}",
           "--set", f"eval.targets={{street: {shards['target-street']}, plaza: {shards['target-plaza']}}}",
           "--set", f"train.storage_path={root / 'ray_results'}", "--set", f"tracking.tracking_uri={uri}",
           "--set", f"tracking.register_as={REGISTERED}"]
    # system metrics every second: a trial here trains for seconds, not minutes
    env = dict(os.environ, RAY_ADDRESS="", PYTHONUNBUFFERED="1", MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")

    first_log = root / "first.log"
    with first_log.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if " done at step " in first_log.read_text(errors="replace"):
                break
            time.sleep(1)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted:\n{first_log.read_text()}"
        proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and the command exits
        try:
            first_rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    first = first_log.read_text(errors="replace")
    ended_first = [line.split()[1] for line in first.splitlines() if line.startswith("trial ") and " done at " in line]
    from zxvad.names import TRIAL_TAG

    status_first = {r.data.tags[TRIAL_TAG]: r.info.status for r in _trial_runs(uri)[1]}

    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    return {"root": root, "uri": uri, "shards": shards, "first": first, "first_rc": first_rc, "ended_first": ended_first,
            "status_first": status_first,
            "second": second.stdout + second.stderr, "second_rc": second.returncode}


def _trial_runs(uri, experiment="zxvad-demo-sweep"):
    import mlflow

    from zxvad.names import ROLE_TAG, SWEEP_TAG

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) != "sweep"]
    assert all(r.data.tags.get(SWEEP_TAG) == experiment for r in runs)
    return client, trials, [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(demo_sweep):
    assert demo_sweep["first_rc"] == 130, demo_sweep["first"][-3000:]
    assert "interrupted; run the same command again to resume" in demo_sweep["first"]
    assert demo_sweep["ended_first"], demo_sweep["first"][-3000:]
    assert demo_sweep["second_rc"] == 0, demo_sweep["second"][-3000:]
    assert "resuming sweep zxvad-demo-sweep" in demo_sweep["second"]
    # the resumed run reports only the trials it ran itself
    for trial_id in demo_sweep["ended_first"]:
        assert f"trial {trial_id} done" not in demo_sweep["second"]
    client, trials, _ = _trial_runs(demo_sweep["uri"])
    assert len(trials) == 4  # one MLflow run per trial, resumed trials included
    from zxvad.names import ATTEMPT_METRIC, TRIAL_TAG

    for run in trials:
        attempts = client.get_metric_history(run.info.run_id, ATTEMPT_METRIC)
        if run.data.tags[TRIAL_TAG] in demo_sweep["ended_first"]:
            assert len(attempts) == 1, "a trial that had ended was run again"
    summary = json.loads((demo_sweep["root"] / "out" / "trials.json").read_text())
    assert not summary["interrupted"] and len(summary["trials"]) == 4
    assert all(t["status"] == "TERMINATED" for t in summary["trials"])


@pytest.mark.slow
def test_asha_stopped_the_weak_trials_early(demo_sweep):
    summary = json.loads((demo_sweep["root"] / "out" / "trials.json").read_text())
    stopped = [t for t in summary["trials"] if t["stopped_early"]]
    assert stopped, summary
    assert all(t["step"] < t["steps"] == 12 for t in stopped)
    # the diverging config (lr_g 1.0, seed 0) reaches rung 1 below the strong config's cutoff
    assert any(t["params"]["train.lr_g"] == 1.0 and t["seed"] == 0 for t in stopped)
    assert any(not t["stopped_early"] and t["step"] == 12 for t in summary["trials"])
    client, trials, _ = _trial_runs(demo_sweep["uri"])
    from zxvad.names import TRIAL_TAG

    by_trial = {r.data.tags[TRIAL_TAG]: r for r in trials}
    for t in summary["trials"]:  # MLflow agrees with what Tune saw at the trial's last result
        history = client.get_metric_history(by_trial[t["trial_id"]].info.run_id, "auc/mean")
        by_step = {m.step: m.value for m in history}
        assert by_step[t["step"]] == pytest.approx(t["auc/mean"], abs=1e-9)
        # ASHA's stop reaches a running trial a moment later: it may log one more evaluation
        assert max(by_step) <= t["steps"]


@pytest.mark.slow
def test_mlflow_status_follows_tune_stopped_trials_finish_interrupted_ones_were_killed(demo_sweep):
    status_first = demo_sweep["status_first"]
    assert status_first, demo_sweep["first"][-3000:]
    for trial_id, status in status_first.items():  # Ctrl+C: what had ended FINISHED, the rest KILLED
        assert status == ("FINISHED" if trial_id in demo_sweep["ended_first"] else "KILLED"), status_first
    _, trials, _ = _trial_runs(demo_sweep["uri"])
    summary = json.loads((demo_sweep["root"] / "out" / "trials.json").read_text())
    assert any(t["stopped_early"] for t in summary["trials"])
    # ASHA's stops kill the trial's actor: the driver records them FINISHED, not RUNNING or FAILED
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4


@pytest.mark.slow
def test_mlflow_holds_one_run_per_trial_and_the_best_config(demo_sweep):
    from zxvad import config

    client, trials, sweep_runs = _trial_runs(demo_sweep["uri"])
    assert len(trials) == 4
    assert sorted(r.data.params["train.lr_g"] for r in trials) == ["0.002", "0.002", "1.0", "1.0"]
    assert sorted(r.data.params["train.seed"] for r in trials) == ["0", "0", "1", "1"]
    for run in trials:
        assert {"auc/street", "auc/plaza", "auc/mean", "loss/l_rec"} <= set(run.data.metrics)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "auc/mean")]
        assert steps == sorted(steps) and steps[0] == 4  # AUC over steps, one point per evaluation
    assert len(sweep_runs) == 1
    artifacts = {a.path for a in client.list_artifacts(sweep_runs[0].info.run_id)}
    assert {"best-config.yaml", "trials.json", "sweep.yaml"} <= artifacts
    best = config.load(str(demo_sweep["root"] / "out" / "best-config.yaml"))
    assert best.train.lr_g == 0.002 and best.train.steps == 12 and best.model.width == 4


@pytest.mark.slow
def test_compare_table_matches_mlflow(demo_sweep, capsys):
    import csv
    import statistics

    from tune import compare

    out = demo_sweep["root"] / "compare"
    rc = compare.main(["--experiment", "zxvad-demo-sweep", "--by", "train.lr_g", "--out", str(out),
                       "--tracking-uri", demo_sweep["uri"]])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| train.lr_g | street | plaza | mean | gain | runs |" in printed
    client, trials, _ = _trial_runs(demo_sweep["uri"])
    rows = {r["train.lr_g"]: r for r in csv.DictReader((out / "zxvad-demo-sweep.csv").open())}
    assert set(rows) == {"0.002", "1.0"}
    for lr, row in rows.items():
        runs = [r for r in trials if r.data.params["train.lr_g"] == lr]
        assert row["runs"] == "2"
        for column in ("street", "plaza", "mean"):
            finals = [r.data.metrics[f"auc/{column}"] for r in runs]
            assert float(row[f"{column}_mean"]) == pytest.approx(statistics.mean(finals), abs=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(statistics.stdev(finals), abs=1e-12)
    assert (out / "zxvad-demo-sweep.md").read_text() in printed
    parent = _trial_runs(demo_sweep["uri"])[2][0].info.run_id
    assert f"runs: 4 child run(s) of sweep run {parent}" in printed
    rc = compare.main(["--experiment", "zxvad-demo-sweep", "--parent", "0" * 32, "--out", str(out),
                       "--tracking-uri", demo_sweep["uri"]])
    assert rc == 2 and f"no run with an AUC metric among the children of run {'0' * 32}" in capsys.readouterr().err
    assert (out / "zxvad-demo-sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_result_grid_shows_the_swept_keys_and_each_trials_best_checkpoint(demo_sweep):
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(str(demo_sweep["root"] / "ray_results" / "zxvad-demo-sweep")))
    df = grid.get_dataframe()
    assert {"config/train.lr_g", "config/seed"} <= set(df.columns)
    assert sorted(zip(df["config/train.lr_g"], df["config/seed"])) == [(0.002, 0), (0.002, 1), (1.0, 0), (1.0, 1)]
    summary = json.loads((demo_sweep["root"] / "out" / "trials.json").read_text())
    for t in summary["trials"]:  # the checkpoint of the trial's best evaluation is still on disk
        assert t["best_checkpoint"] and Path(t["best_checkpoint"], "state.pt").exists(), t
    assert "best checkpoint (trial " in demo_sweep["second"]


@pytest.mark.slow
def test_mlflow_nests_trials_under_the_sweep_with_datasets_and_a_registered_g(demo_sweep):
    import mlflow
    import torch

    from zxvad.data.shardset import manifest_digest
    from zxvad.names import PARENT_TAG

    client, trials, sweep_runs = _trial_runs(demo_sweep["uri"])
    parent = sweep_runs[0]
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(r.info.run_id for r in trials) and len(children) == 4
    assert parent.data.tags.get(PARENT_TAG) is None
    shards = demo_sweep["shards"]
    expected = {"training,donor": ("source", shards["source"]),
                "target:street": ("target-street", shards["target-street"]),
                "target:plaza": ("target-plaza", shards["target-plaza"])}
    for run in trials:
        logged = {}
        for item in client.get_run(run.info.run_id).inputs.dataset_inputs:
            context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
            logged[context] = (item.dataset.name, item.dataset.digest, json.loads(item.dataset.source)["uri"])
        assert logged == {c: (name, manifest_digest(str(path)), str(path)) for c, (name, path) in expected.items()}
        assert "system/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
    summary = json.loads((demo_sweep["root"] / "out" / "trials.json").read_text())
    complete = {t["trial_id"] for t in summary["trials"] if not t["stopped_early"]}
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert len(versions) == len(complete) >= 1  # one version per trial that trained to its end
    by_run = {r.info.run_id: r for r in trials}
    for version in versions:
        run = by_run[version.run_id]
        assert run.data.tags["zxvad.trial_id"] in complete
        final = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "auc/mean")}[12]
        assert float(version.tags["auc/mean"]) == pytest.approx(final, abs=1e-6)
    latest = f"models:/{REGISTERED}/latest"
    mlflow.set_tracking_uri(demo_sweep["uri"])  # models:/ URIs resolve through the global registry URI
    info = mlflow.models.get_model_info(latest)
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64, 64, 3]
    assert info.saved_input_example_info is not None
    import numpy as np

    from zxvad.checkpoint import load_generator

    G, _ = load_generator(latest)
    assert G(torch.zeros(1, 4, 3, 64, 64)).prediction.shape == (1, 3, 64, 64)
    served = mlflow.pyfunc.load_model(latest).predict(np.zeros((6, 64, 64, 3), dtype=np.uint8))
    assert list(served["frame"]) == [4, 5] and served["psnr"].notna().all()  # frames after T=4
