"""Tune's searchers over a sweep's param_space, and Ray Train keeping the best checkpoint by AUC.

Real Ray (one local instance for this module, 2 CPUs), real Tune searchers and a real
TorchTrainer. The trials here are a function that builds each trial's validated config and
reports a score computed from it, so the searchers run in seconds; the demo sweep in
tests/test_tune.py trains for real.
"""

import math

import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import os
    from pathlib import Path

    import ray

    # Tune's trial actors unpickle this module's functions: they need tests/ on their path too.
    here = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), here) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


SPACE = {"loss.alpha_n": {"loguniform": [0.1, 10.0]},
         "model.backbone": {"choice": ["alexnet", "resnet50"]},
         "model.width,model.memory_dim": {"choice": [[4, 32], [8, 64]]}}


def _sweep(tmp_path, search, **extra):
    from tune import space

    body = {"name": f"s-{search}", "base": "demo", "space": dict(SPACE), "search": search,
            "samples": 4, "search_seed": 3, **extra}
    path = tmp_path / f"{search}.yaml"
    path.write_text(yaml.safe_dump(body))
    return space.load(str(path))


def _objective(config, sweep):
    """Builds the trial's config the way tune.trial does and scores it: best at alpha_n = 2."""
    from ray import tune

    from tune.trial import trial_params

    params, seed = trial_params(config)
    cfg = sweep.trial_config(params, seed)
    tune.report({"auc/mean": 1 - abs(math.log(cfg.loss.alpha_n / 2.0)), "alpha_n": cfg.loss.alpha_n,
                 "memory_dim": cfg.model.memory_dim, "width": cfg.model.width, "train_seed": cfg.train.seed})


def _fit(sweep, tmp_path):
    from ray import tune

    from tune.sweep import _tune_config, param_space

    tuner = tune.Tuner(tune.with_parameters(_objective, sweep=sweep), param_space=param_space(sweep),
                       tune_config=_tune_config(sweep, 2),
                       run_config=tune.RunConfig(name=sweep.name, storage_path=str(tmp_path / "ray"), verbose=0))
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return grid.get_dataframe()


def _check_common(df, n):
    assert len(df) == n
    for column in ("config/loss.alpha_n", "config/model.backbone", "config/model.width,model.memory_dim",
                   "config/seed"):
        assert column in df.columns, list(df.columns)
    assert df["config/loss.alpha_n"].between(0.1, 10.0).all()
    assert (df["alpha_n"] == df["config/loss.alpha_n"]).all()  # the trial trained what Tune shows
    assert set(df["config/model.backbone"]) <= {"alexnet", "resnet50"}
    assert (df["memory_dim"] == 8 * df["width"]).all()  # joint keys drawn together
    assert (df["train_seed"] == df["config/seed"]).all()


def test_random_search_keeps_drawn_values_over_the_seed_grid(local_ray, tmp_path):
    sweep = _sweep(tmp_path, "random", seeds=2)
    df = _fit(sweep, tmp_path)
    _check_common(df, 4 * 2)
    assert sorted(df["config/seed"]) == [0, 0, 0, 0, 1, 1, 1, 1]
    per_config = df.groupby(["config/loss.alpha_n", "config/model.backbone"])["config/seed"].apply(sorted)
    assert len(per_config) == 4 and all(seeds == [0, 1] for seeds in per_config)  # same values, both seeds


def test_grid_search_crosses_every_choice(local_ray, tmp_path):
    body = {**SPACE, "loss.alpha_n": {"grid": [0.5, 2.0]}}
    sweep = _sweep(tmp_path, "grid", space=body, samples=1)
    df = _fit(sweep, tmp_path)
    _check_common(df, 2 * 2 * 2)
    combos = {(a, b, tuple(w)) for a, b, w in zip(df["config/loss.alpha_n"], df["config/model.backbone"],
                                                  df["config/model.width,model.memory_dim"])}
    assert len(combos) == 8 and len(sweep.variants()) == 8


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_model_based_searchers_propose_within_the_space(local_ray, tmp_path, search):
    sweep = _sweep(tmp_path, search, samples=6)
    df = _fit(sweep, tmp_path)
    _check_common(df, 6)
    assert set(df["config/seed"]) == {0}
    assert df["config/loss.alpha_n"].nunique() == 6  # proposals, not one value repeated


# ----------------------------------------------------------------------------- checkpoints


def _reports(config):
    """Rank 0 reports AUCs 0.6, -, 0.9, -, 0.5, 0.4 (``-``: a checkpoint saved between evaluations)."""
    import os
    import tempfile

    import ray.train

    for step, auc in enumerate([0.6, None, 0.9, None, 0.5, 0.4], start=1):
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "step"), "w") as f:
                f.write(str(step))
            metrics = {"step": step, **({} if auc is None else {"auc/mean": auc})}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def test_kept_checkpoint_is_the_best_by_auc_not_the_newest(local_ray, tmp_path):
    from pathlib import Path

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from helpers import tiny_config
    from zxvad.run import console, launch

    cfg = tiny_config("train.keep_checkpoints=1", "eval.targets={a: x}")
    trainer = TorchTrainer(_reports, scaling_config=ScalingConfig(num_workers=1),
                           run_config=RunConfig(name="keep", storage_path=str(tmp_path / "ray"),
                                                checkpoint_config=launch.checkpoint_config(cfg)))
    result = trainer.fit()
    kept = sorted(p for p in Path(result.path).glob("checkpoint_*") if p.is_dir())  # not the snapshot .json
    steps = sorted(int((folder / "step").read_text()) for folder in kept)
    assert steps == [3, 6]  # the best (AUC 0.9) and the latest (for resuming); 1, 2, 4, 5 deleted
    best, value = launch.best_checkpoint(result, cfg)
    assert value == 0.9 and (Path(best.path) / "step").read_text() == "3"
    assert (Path(result.checkpoint.path) / "step").read_text() == "6"
    text = console.summary(result, cfg, "keep", "", "")
    assert f"best checkpoint (auc/mean 0.9000): {best.path}" in text
    assert f"latest checkpoint: {result.checkpoint.path}" in text
