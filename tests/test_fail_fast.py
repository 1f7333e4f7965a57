"""Bad input fails fast with one line and exit 2, test sets are sacred, secrets stay out.

No Ray here: every check runs on the driver (or in a helper that Ray calls), so each case is quick.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny_config, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


# -- item 3: ranges, target names, outputs inside --out ----------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.lr_g=-0.001", "'train.lr_g' = -0.001: must be positive"),
    ("train.lr_d=0", "'train.lr_d' = 0.0: must be positive"),
    ("train.beta1=1.0", "'train.beta1' = 1.0: must lie in [0, 1)"),
    ("train.beta2=-0.1", "'train.beta2' = -0.1: must lie in [0, 1)"),
    ("train.log_every=0", "'train.log_every' = 0: must be at least 1"),
    ("data.shuffle_buffer=0", "'data.shuffle_buffer' = 0"),
    ("model.disc_width=0", "'model.disc_width' = 0"),
    ("eval.top_frames=-1", "'eval.top_frames' = -1"),
    ("loss.arcface_scale=0", "'loss.arcface_scale' = 0.0"),
    ("eval.targets={a/b: x}", "target name 'a/b'"),
    ("eval.targets={..: x}", "target name '..'"),
])
def test_config_values_are_range_checked(override, message):
    from zxvad import config

    with pytest.raises(config.ConfigError, match=None) as err:
        config.load("demo", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluate_never_writes_outside_out(tmp_path, capsys):
    from zxvad import evaluate

    ckpt = write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "a" / "b" / "out"
    code = evaluate.main(["--checkpoint", str(ckpt), "--target", f"../../escaped={tmp_path}",
                          "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "target name '../../escaped'" in line
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("escaped*"))


def test_report_refuses_an_unsafe_target_name_before_writing(tmp_path):
    from zxvad import evaluate
    from zxvad.config import ConfigError

    with pytest.raises(ConfigError, match="a/b"):
        evaluate.write_report({"a/b": None}, tmp_path / "out", T=4)
    assert not (tmp_path / "out").exists()


# -- item 1: every shard set checked on the driver, before Ray ---------------------------------

@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    from helpers import built_set

    return built_set(tmp_path_factory.mktemp("built"), [16] * 4, "train", "mjpeg", clip_len=8)


@pytest.fixture
def shard_set(built_once, tmp_path):
    """A fresh copy of a small healthy set, for a test to damage."""
    return Path(shutil.copytree(built_once, tmp_path / "shards"))


def _train_argv(shards, tmp_path, *extra):
    argv = ["--config", "demo", "--no-mlflow"]
    for item in [f"data.train_shards={shards}", f"data.donor_shards={shards}", "eval.targets={}",
                 f"train.storage_path={tmp_path / 'ray_results'}", *extra]:
        argv += ["--set", item]
    return argv


@pytest.mark.parametrize("damage, message", [
    (lambda tar: Path(tar).with_suffix(".idx").unlink(), "DALI index"),
    (lambda tar: os.truncate(tar, os.path.getsize(tar) // 2), "truncated or rewritten"),
    (lambda tar: Path(tar).unlink(), "not found"),
])
def test_a_damaged_shard_set_fails_on_the_driver(shard_set, tmp_path, capsys, monkeypatch, damage, message):
    from zxvad import train
    from zxvad.run import launch

    monkeypatch.setattr(launch, "fit_with_storage_retries", lambda *a, **k: pytest.fail("reached Ray"))
    tar = sorted(shard_set.glob("*.tar"))[1]
    damage(str(tar))
    code = train.main(_train_argv(shard_set, tmp_path))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and str(tar) in line and message in line


def test_driver_checks_fail_before_torch_mlflow_or_sklearn_are_imported(shard_set, tmp_path):
    """Those imports take seconds on 2 cores: a bad config, shard set or server is reported first."""
    healthy = shutil.copytree(shard_set, tmp_path / "healthy")
    Path(sorted(shard_set.glob("*.tar"))[1]).with_suffix(".idx").unlink()
    code = ("import sys, json\nfrom zxvad import train\ncodes = [train.main(a) for a in json.loads(sys.argv[1])]\n"
            "print(json.dumps([codes, sorted(m for m in ('torch', 'mlflow', 'sklearn', 'ray') if m in sys.modules)]))")
    runs = [_train_argv(shard_set, tmp_path), _train_argv(shard_set, tmp_path, "train.lr_g=-0.001"),
            [a for a in _train_argv(healthy, tmp_path, "tracking.tracking_uri=http://u:p@127.0.0.1:9")
             if a != "--no-mlflow"]]
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(runs)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[2, 2, 2], []], proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "DALI index" in lines[0] and "train.lr_g" in lines[1] and "unreachable" in lines[2], lines


def test_index_past_the_end_and_sha256_are_caught(shard_set):
    from zxvad.data import ShardError, verify_shard_set

    tar = sorted(shard_set.glob("*.tar"))[0]
    assert verify_shard_set(str(shard_set)) and verify_shard_set(str(shard_set), full_hash=True)
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF  # same size: only the hash can see it
    tar.write_bytes(bytes(data))
    assert verify_shard_set(str(shard_set))
    with pytest.raises(ShardError, match="sha256 differs"):
        verify_shard_set(str(shard_set), full_hash=True)
    index = tar.with_suffix(".idx")
    lines = index.read_text().splitlines()
    fields = lines[-1].split()
    fields[2] = str(int(fields[2]) + len(data))  # an offset beyond the tar
    index.write_text("\n".join(lines[:-1] + [" ".join(fields)]) + "\n")
    with pytest.raises(ShardError, match="index .* (has .* bytes|differs from the manifest's sha256)"):
        verify_shard_set(str(shard_set))
    _drop_index_records(shard_set)  # a manifest from before index sizes were recorded
    with pytest.raises(ShardError, match="past the end of the tar"):
        verify_shard_set(str(shard_set))


def _drop_index_records(shard_set: Path) -> None:
    manifest = json.loads((shard_set / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry.pop("index_bytes"), entry.pop("index_sha256")
    (shard_set / "manifest.json").write_text(json.dumps(manifest))


def test_the_manifest_records_each_index_and_the_driver_compares_it(shard_set):
    import hashlib

    from zxvad.data import ShardError, verify_shard_set

    manifest = json.loads((shard_set / "manifest.json").read_text())
    for entry in manifest["shards"]:
        index = (shard_set / entry["index"]).read_bytes()
        assert entry["index_bytes"] == len(index) and entry["index_sha256"] == hashlib.sha256(index).hexdigest()
    index = sorted(shard_set.glob("*.idx"))[1]
    healthy = index.read_bytes()
    index.write_bytes(healthy[:-20])  # cut, still parses as an index of fewer bytes
    with pytest.raises(ShardError, match=f"index {index} has {len(healthy) - 20} bytes, but the manifest "
                                         f"records {len(healthy)}"):
        verify_shard_set(str(shard_set))
    flipped = bytearray(healthy)
    position = healthy.rindex(b" ") - 1  # a digit of the last entry's size: same length, other value
    flipped[position] = ord("1") if flipped[position] != ord("1") else ord("2")
    index.write_bytes(bytes(flipped))
    with pytest.raises(ShardError, match="differs from the manifest's sha256"):
        verify_shard_set(str(shard_set))
    index.write_bytes(healthy)
    _drop_index_records(shard_set)  # old manifests still load, without the index check
    assert len(verify_shard_set(str(shard_set))) == len(manifest["shards"])


def test_a_dali_error_on_shards_damaged_after_the_check_is_permanent(shard_set):
    """The driver's check passed, then the tars were cut: DALI's RuntimeError in the worker is
    re-classified by checking the sets again, so Ray Train does not retry it (ShardError)."""
    from zxvad.run import plan, worker
    from zxvad.data import ClipLoader, ShardError

    cfg = tiny_config(f"data.train_shards={shard_set}", f"data.donor_shards={shard_set}", "eval.targets={}")
    inputs = plan.resolve_inputs(cfg)
    assert inputs.sets == [(str(shard_set), 1.0), (str(shard_set), 1.0)]
    with pytest.raises(RuntimeError, match="store unreachable") as err:  # sound shards: still retried
        with worker.data_errors_classified(inputs):
            raise RuntimeError("store unreachable")
    assert not isinstance(err.value, ValueError)
    for info in inputs.train:  # after the driver's check, before the worker's DALI reads them
        os.truncate(info.path, 1024)  # every sample past the first header is gone
    with pytest.raises(ShardError, match=r"shard .*clips-0000\d\d\.tar: 1024 bytes, but the manifest records .*\(DALI: ") as err:
        with worker.data_errors_classified(inputs):
            next(iter(ClipLoader(inputs.train, batch_size=2, clip_len=5, size=(16, 16), seed=0, threads=1)))
    assert type(err.value.__cause__) is RuntimeError and "Critical error" not in str(err.value)


# -- items 4 and 5: test sets are sacred; an all-bad build writes nothing ------------------------

def _avi(path: Path, frames: int = 30) -> Path:
    """An MJPEG AVI of moving pattern frames (its header declares ``frames``)."""
    import av
    import numpy as np

    from helpers import pattern

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for frame in pattern(0, range(frames)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _labelled(folder: Path, name: str, frames: int) -> None:
    import numpy as np

    np.save(folder / f"{name}.npy", (np.arange(frames) % 7 >= 4).astype(np.uint8))


def _build(root, out, split, **kw):
    from shards.build import build

    return build("videofolder", root, out, split=split, size=(32, 32), codec="mjpeg", clip_len=8,
                 overlap=4, progress=False, **kw)


def test_a_truncated_labelled_test_video_stops_the_build(tmp_path):
    from shards.writer import BuildError

    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a", "b"):
        _avi(root / f"{name}.avi")
        _labelled(root, name, 30)
    os.truncate(root / "b.avi", os.path.getsize(root / "b.avi") // 2)
    with pytest.raises(BuildError, match=r"test video b \(.*\): truncated") as err:
        _build(root, tmp_path / "test", "test")
    assert "\n" not in str(err.value) and not (tmp_path / "test" / "manifest.json").exists()
    manifest = _build(root, tmp_path / "test-skip", "test", skip_bad_test_videos=True)
    assert [s["reason"].split(":")[0] for s in manifest["skipped"]] == ["truncated"]
    assert manifest["totals"]["videos"] == 1


def test_a_training_set_lists_a_truncated_video_as_truncated(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a", "b"):
        _avi(root / f"{name}.avi")
    os.truncate(root / "b.avi", os.path.getsize(root / "b.avi") // 2)
    manifest = _build(root, tmp_path / "train", "train")
    assert len(manifest["skipped"]) == 1 and "b.avi" in manifest["skipped"][0]["input"]
    assert manifest["skipped"][0]["reason"].startswith("truncated")


def test_an_unreadable_frame_in_a_labelled_test_video_stops_the_build(tmp_path):
    from helpers import frame_folders
    from shards.writer import BuildError

    root = frame_folders(tmp_path / "videos", [12, 12], labelled=True)
    (root / "v1" / "0005.png").write_bytes(b"not a png")
    with pytest.raises(BuildError, match="test video v1"):
        _build(root, tmp_path / "test", "test")
    assert not (tmp_path / "test" / "manifest.json").exists()


def test_an_all_bad_build_exits_2_and_writes_no_manifest(tmp_path, capsys):
    from shards.build import main

    root = tmp_path / "videos" / "cls"
    root.mkdir(parents=True)
    (root / "a.avi").write_bytes(b"not a video")
    (root / "b.mp4").write_bytes(b"\x00" * 100)
    began = time.time()
    code = main(["videofolder", "--root", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                 "--size", "32x32", "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "no clips written: all 2 inputs were skipped" in line
    assert not list((tmp_path / "out").iterdir())  # no manifest, no shard, no work files
    assert time.time() - began < 10


# -- item 6: secrets in URLs and secret-named keys never persist or print -----------------------

SECRET_URLS = ["train.s3_endpoint=http://alice:hunter22@store:9000",
               "tracking.tracking_uri=http://bob:pa55word@mlflow:5000",
               "train.storage_path=s3://carol:t0psecret@bucket/runs"]


def test_userinfo_and_secret_keys_are_redacted_in_params_yaml_and_checkpoints(tmp_path):
    from zxvad import checkpoint, redaction
    from zxvad.step import build_state

    cfg = tiny_config(*SECRET_URLS, "eval.targets={street: s, api_key: kv99}")
    params = redaction.safe_params(cfg)
    text = repr(params) + redaction.redacted_config(cfg).to_yaml()
    for secret in ("hunter22", "pa55word", "t0psecret", "kv99"):
        assert secret not in text
    assert params["train.s3_endpoint"] == "http://***@store:9000" and params["eval.targets.street"] == "s"
    assert cfg.train.s3_endpoint == "http://alice:hunter22@store:9000"  # the run keeps what it needs
    state = build_state(cfg, "cpu")
    folder = checkpoint.save(state, tmp_path / "ckpt")
    saved = (folder / "config.yaml").read_text()
    assert "hunter22" not in saved and "http://***@store:9000" in saved
    restored, reread = checkpoint.read(folder)  # a redacted checkpoint still resumes
    state.load_state_dict(restored)
    assert reread.train.s3_endpoint == "http://***@store:9000"


def test_printed_error_lines_hide_userinfo(shard_set, tmp_path, capsys):
    from zxvad import train

    argv = _train_argv(shard_set, tmp_path, "tracking.tracking_uri=http://bob:pa55word@127.0.0.1:9")
    code = train.main([a for a in argv if a != "--no-mlflow"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "http://***@127.0.0.1:9" in line and "pa55word" not in line
    assert "Connection refused" in line  # the check asks the host itself, not 'bob:pa55word@127.0.0.1'


# -- item 7: a failed or interrupted run is recorded as such; artifacts beside the sqlite file ----

@pytest.mark.parametrize("raised, status, code", [(RuntimeError("node lost"), "FAILED", 1),
                                                  (KeyboardInterrupt(), "KILLED", None)])
def test_mlflow_status_of_a_run_that_does_not_finish(shard_set, tmp_path, monkeypatch, raised, status, code):
    import mlflow
    import ray

    from zxvad import train
    from zxvad.run import launch
    from zxvad.names import RUN_NAME_TAG

    def fit(*args, **kwargs):
        raise raised

    monkeypatch.setattr(ray, "init", lambda *a, **k: None)  # no cluster: the fit below never reaches one
    monkeypatch.setattr(launch, "fit_with_storage_retries", fit)
    db = tmp_path / "db" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = _train_argv(shard_set, tmp_path, f"tracking.tracking_uri=sqlite:///{db}",
                       "tracking.run_name=broken")[1:]
    argv = [a for a in argv if a != "--no-mlflow"]
    if code is None:
        with pytest.raises(KeyboardInterrupt):
            train.main(["--config", *argv])
    else:
        assert train.main(["--config", *argv]) == code
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("zxvad-demo")
    run = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = 'broken'")[0]
    assert run.info.status == status
    assert experiment.artifact_location == (db.parent / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()


def test_compare_leaves_failed_runs_out_unless_asked(tmp_path, capsys):
    import mlflow

    from tune import compare
    from zxvad.names import RUN_NAME_TAG
    from zxvad.tracking.store import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = experiment_id(uri, "exp")
    for name, status, auc in (("good", "FINISHED", 0.9), ("bad", "FAILED", 0.99), ("cut", "KILLED", 0.98)):
        run = client.create_run(experiment, run_name=name, tags={RUN_NAME_TAG: name})
        client.log_param(run.info.run_id, "train.seed", name)
        client.log_metric(run.info.run_id, "auc/street", auc)
        client.set_terminated(run.info.run_id, status=status)
    assert {r.info.run_name for r in compare.load_runs("exp", uri)} == {"good"}
    assert {r.info.run_name for r in compare.load_runs("exp", uri, include_failed=True)} == {"good", "bad", "cut"}
    assert compare.main(["--experiment", "exp", "--tracking-uri", uri, "--out", str(tmp_path / "c")]) == 0
    assert "99.00" not in capsys.readouterr().out


def test_artifact_location_sets_new_experiments_root_and_not_the_run_name(tmp_path, monkeypatch, capsys):
    import mlflow

    from tune.trial import sweep_run
    from tune import space
    from zxvad.tracking.runs import open_run
    from zxvad.run import plan

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    plain = tiny_config(f"tracking.tracking_uri={uri}", "tracking.experiment=e1")
    rooted = tiny_config(f"tracking.tracking_uri={uri}", "tracking.experiment=e1", "tracking.artifact_location=arts")
    assert plan.default_run_name(plain) == plan.default_run_name(rooted)  # a resume may add it
    assert plan.default_run_name(plain) != plan.default_run_name(tiny_config("tracking.experiment=e1", "train.lr_g=1e-3"))
    _, run_id = open_run(rooted, "r1")
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("e1").artifact_location == (tmp_path / "arts").as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith((tmp_path / "arts").as_uri())
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert (tmp_path / "arts").is_dir() and not (tmp_path / "db" / "mlartifacts").exists()
    capsys.readouterr()
    elsewhere = tiny_config(f"tracking.tracking_uri={uri}", "tracking.experiment=e1",
                            "tracking.artifact_location=s3://other/root")
    open_run(elsewhere, "r2")  # MLflow cannot move an experiment: it says so and keeps it
    assert "warning: MLflow experiment 'e1' keeps its artifact location" in capsys.readouterr().out
    assert client.get_experiment_by_name("e1").artifact_location == (tmp_path / "arts").as_uri()
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("name: sw\nbase: demo\nsearch: random\nsamples: 1\n"
                          "space: {loss.alpha_n: {choice: [1.0]}}\nset: {tracking.artifact_location: sweep-arts}\n")
    sweep = space.load(str(sweep_file))
    assert sweep.trial_config({}, 0).tracking.artifact_location == str(tmp_path / "sweep-arts")  # trials run elsewhere
    sweep_run(sweep, uri, sweep_file.read_text())
    assert client.get_experiment_by_name("sw").artifact_location == (tmp_path / "sweep-arts").as_uri()


def test_sweep_trial_runs_end_as_tune_saw_the_trials_end(tmp_path, capsys):
    """Tune kills a stopped trial's actor, so the driver's RunStatus records each trial's end."""
    from types import SimpleNamespace

    import mlflow

    from tune import compare
    from tune.trial import RunStatus
    from zxvad.names import RUN_NAME_TAG
    from zxvad.tracking.store import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = experiment_id(uri, "sw")
    trials = {name: SimpleNamespace(trial_id=name, status=status) for name, status in (
        ("done", "TERMINATED"), ("cut", "TERMINATED"), ("raised", "ERROR"), ("running", "RUNNING"),
        ("pending", "PENDING"))}
    for name in ("done", "cut", "raised", "running"):  # "pending" never started: no run
        run = client.create_run(experiment, run_name=f"sw-{name}", tags={RUN_NAME_TAG: f"sw-{name}"})
        client.log_metric(run.info.run_id, "auc/street", 0.5)  # left RUNNING, as a killed worker leaves it
    callback = RunStatus(uri, "sw")
    for name in ("done", "cut"):  # completed, or stopped by ASHA: both reach on_trial_complete
        callback.on_trial_complete(0, list(trials.values()), trials[name])
    callback.on_trial_error(0, list(trials.values()), trials["raised"])
    callback.on_experiment_end(list(trials.values()))  # Ctrl+C: "running" was still running
    status = {r.info.run_name: r.info.status for r in client.search_runs([experiment])}
    assert status == {"sw-done": "FINISHED", "sw-cut": "FINISHED", "sw-raised": "FAILED", "sw-running": "KILLED"}
    assert {r.info.run_name for r in compare.load_runs("sw", uri)} == {"sw-done", "sw-cut"}


# -- items 2 and 8: a permanent worker error is not retried; Ray's own lines stay in its logs ----

def test_permanent_worker_errors_stop_the_run_and_transient_ones_do_not():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import ControllerError

    from zxvad.run import launch
    from zxvad.data import ShardError

    callback = launch._stop_on_permanent_errors()
    callback.after_exception(None, {0: UserExceptionWithTraceback(ConnectionError("node lost"), "tb")})
    with pytest.raises(launch.PermanentError, match="worker 1: ShardError: shard x.tar: bad"):
        callback.after_exception(None, {0: UserExceptionWithTraceback(ConnectionError("peer"), "tb"),
                                        1: UserExceptionWithTraceback(ShardError("shard x.tar: bad"), "tb")})
    wrapped = ControllerError(launch.PermanentError("worker 0: ValueError: Invalid learning rate"))
    assert str(launch.permanent_cause(wrapped)) == "worker 0: ValueError: Invalid learning rate"
    assert launch.permanent_cause(ControllerError(RuntimeError("x"))) is None


def test_trainer_keeps_ray_internals_out_of_the_terminal(tmp_path):
    from zxvad.run import launch, plan

    cfg = tiny_config(f"train.storage_path={tmp_path}")
    job = launch.make_job(cfg, plan.Inputs([], [], {}))
    quiet = launch.build_trainer(job, "run").run_config
    assert quiet.worker_runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # no double lines
    assert quiet.logging_config.log_level == "CRITICAL"
    assert launch.build_trainer(job, "run", verbose=True).run_config.logging_config.log_level == "INFO"
    assert any(type(c).__name__ == "StopOnPermanentErrors" for c in quiet.callbacks)


def test_only_the_training_workers_own_lines_reach_the_terminal():
    """What Ray streams to the driver (log_to_driver) passes through train's filter: Ray's internal
    actors' lines (they stay in Ray's session logs, which Ray writes before streaming) are dropped."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from zxvad.run import console

    printed = []
    before = list(dispatcher.handlers)
    dispatcher.handlers = [("ray_print_logs", printed.append)]  # as ray.init(log_to_driver=True) adds it
    try:
        assert console.show_only_worker_lines()
        batches = [
            {"actor_name": "PlacementGroupCleaner", "is_err": True, "pid": 7, "lines": [
                "Traceback (most recent call last):", "ray.util.state.exception.RayStateApiException: "
                "Failed to query Ray Train Controller actor state"]},
            {"actor_name": "TrainController", "is_err": True, "pid": 8, "lines": [
                "[2026-11-30 13:00:00,000 W 8 8] core_worker.cc:1234: task failed"]},
            {"actor_name": "", "task_name": "", "pid": "raylet", "is_err": True, "lines": ["raylet noise"]},
            {"actor_name": "RayTrainWorker", "is_err": False, "pid": 9, "lines": [
                "step 1/4 | l_rec 0.1 | 1.00 step/s | ETA 0m03s"]},
            {"actor_name": "RayTrainWorker", "is_err": True, "pid": 9, "lines": [
                "/site-packages/torch/x.py:1: UserWarning: deprecated", "warning: shard x is slow"]},
        ]
        for batch in batches:
            dispatcher.emit(batch)
    finally:
        dispatcher.handlers = before
    assert [(b["pid"], b["lines"]) for b in printed] == [
        (9, ["step 1/4 | l_rec 0.1 | 1.00 step/s | ETA 0m03s"]), (9, ["warning: shard x is slow"])]


@pytest.mark.slow
def test_a_permanent_error_in_a_worker_is_not_retried(shard_set, tmp_path):
    """End to end on a local Ray: clips too short for T+1 fail in the worker, once, exit 2."""
    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    argv = _train_argv(shard_set, tmp_path, "model.T=8", "model.image_size=32", "model.width=4",
                       "model.memory_dim=32", "model.memory_items=8", "model.disc_width=4",
                       "model.backbone_size=64", "train.batch_size=2", "train.num_workers=1",
                       "train.max_failures=3", "data.shuffle_buffer=8")
    proc = subprocess.run([sys.executable, "-m", "zxvad.train", *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=900)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith("error: training stopped, not retried: worker 0: ShardError") and "9" in last
    assert "Failed to query Ray Train Controller actor state" not in proc.stderr  # a Ray warning
    assert "Attempting to start training worker group" not in proc.stderr  # Train's INFO lines stay in its logs
    assert "Error in training function" not in proc.stderr
    noise = ("PlacementGroupCleaner", "core_worker.cc", "Reporting training result", "Traceback")
    assert not [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if any(n in line for n in noise)]
    # the log files of this run's own Ray session (named on the failure) keep what the terminal left out
    logs = Path(next(line for line in proc.stderr.splitlines() if line.startswith("Ray's full log: "))
                .split(": ", 1)[1].split(" (or rerun")[0])
    kept = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    assert ":actor_name:TrainController" in kept and ":actor_name:RayTrainWorker" in kept
    kept += "".join(p.read_text(errors="replace") for p in logs.glob("train/*.log"))
    assert "ShardError" in kept and "Traceback" in kept  # the worker's full traceback, which the terminal lacks


def test_detect_warns_when_a_file_ends_early(tmp_path, capsys):
    from zxvad import detect

    ckpt = write_checkpoint(tmp_path / "ckpt")
    import av

    video = _avi(tmp_path / "cam.avi")
    with av.open(str(video)) as container:  # cut at a frame boundary: every frame left decodes
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    os.truncate(video, packets[14][0] + packets[14][1])
    code = detect.main([str(video), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: cam: the input ended after" in err and "of the 30 frames its header declares" in err
