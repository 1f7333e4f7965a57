"""Ray Tune sweeps of zxVAD training runs: loss weights, TI data fractions, sources, backbones.

``python -m tune.sweep --config FILE.yaml|NAME [--set key=value ...] [--out DIR] [--fresh]``

Each trial is a real training run, started through the same door as ``python -m zxvad.train``
(``zxvad.run``: plan, then launch); a Train callback forwards every evaluation (the AUC
per target and their mean) to Tune, so that ASHA can stop weak trials after any evaluation
round. Every trial logs into its own MLflow run of the experiment named after the sweep (tag
``zxvad.sweep``); a sweep-level run holds the best config as YAML. Interrupted (Ctrl+C) or
crashed sweeps resume when the same command is run again: finished trials are kept, unfinished
ones continue from their last checkpoint. The sweep file is validated before Ray starts
(see ``tune.space``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from shards.storage import atomic_write, is_s3
from tune import space
from tune.space import Sweep, SweepError
from zxvad.config import ConfigError

# The Tune function itself only waits on its TorchTrainer; its workers hold the real resources.
DRIVER_CPUS = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ray() -> None:
    """Join RAY_ADDRESS's cluster, or start a local Ray with its dashboard.

    ASHA stops a trial by killing its Tune actor; Train's placement-group cleaner then asks the
    dashboard's state API whether the controller died. On a machine with several local Ray
    instances that API cannot tell which to ask, so the local instance names its own.
    """
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    port = _free_port()
    ray.init(include_dashboard=True, dashboard_port=port, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def _concurrency(sweep: Sweep) -> int:
    """How many trials run at once: the file's max_concurrent, else what the cluster holds."""
    import ray

    if sweep.max_concurrent:
        return sweep.max_concurrent
    total = ray.cluster_resources()
    res = sweep.resources
    by_cpus = int(total.get("CPU", 1) // (res.workers * res.cpus + DRIVER_CPUS))
    if res.gpus:  # a GPU trial's workers also hold their loaders' CPUs
        return max(1, min(int(total.get("GPU", 0) // (res.workers * res.gpus)), by_cpus))
    return max(1, by_cpus)


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Tune's search space: the swept config keys under their own names, and ``seed``.

    Joint keys stay one dimension named ``"a,b"`` whose values are lists, so they are drawn
    together. Optuna and HyperOpt take no grids: their trials all run seed 0.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for dim in sweep.space:
        options = [list(v) if isinstance(v, tuple) else v for v in dim.values]
        if dim.kind == "loguniform":
            out[dim.name] = tune.loguniform(*dim.values)
        elif dim.kind == "uniform":
            out[dim.name] = tune.uniform(*dim.values)
        elif dim.kind == "grid" or sweep.search == "grid":
            out[dim.name] = tune.grid_search(options)
        else:
            out[dim.name] = tune.choice(options)
    out[space.SEED] = 0 if sweep.search in space.MODEL_SEARCHES else tune.grid_search(list(range(sweep.seeds)))
    return out


def search_algorithm(sweep: Sweep):
    """Tune's ``search_alg`` for the sweep's ``search`` (all seeded by ``search_seed``)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.search_seed)
    if sweep.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=sweep.search_seed)
    # constant_grid_search: random values drawn once per sample, kept over the seed grid;
    # max_concurrent: trials are made as slots free up, so they run in the order they were drawn
    return BasicVariantGenerator(constant_grid_search=True, random_state=sweep.search_seed,
                                 max_concurrent=sweep.max_concurrent)


def _tune_config(sweep: Sweep, concurrency: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler = FIFOScheduler()
    if sweep.scheduler.kind == "asha":
        scheduler = ASHAScheduler(time_attr="eval_round", max_t=sweep.eval_rounds,
                                  grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    return tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
                           search_alg=search_algorithm(sweep),
                           num_samples=1 if sweep.search == "grid" else sweep.samples,
                           max_concurrent_trials=concurrency)


def trial_table(sweep: Sweep, experiment_path: str, filesystem=None) -> list[dict[str, Any]]:
    """One dict per trial: id, config id, seed, params, status, last step, metric, stopped early."""
    from ray.tune import ExperimentAnalysis

    from tune.trial import trial_params

    analysis = ExperimentAnalysis(experiment_path, storage_filesystem=filesystem,
                                  default_metric=sweep.metric, default_mode=sweep.mode)
    out = []
    dataframes = analysis.trial_dataframes
    for trial in analysis.trials:
        params, seed = trial_params(trial.config)
        steps = sweep.trial_config(params, seed).train.steps
        last = trial.last_result or {}
        step = last.get("step")
        error = ""
        if trial.status == "ERROR":
            error = (trial.error_file and _last_line(trial)) or "failed"
        out.append({
            "trial_id": trial.trial_id, "config_id": space.config_id(params), "seed": seed,
            "params": params, "status": trial.status, "error": error, "step": step, "steps": steps,
            sweep.metric: last.get(sweep.metric), "eval_round": last.get("eval_round"),
            "stopped_early": trial.status == "TERMINATED" and step is not None and step < steps,
            "best_checkpoint": _best_checkpoint(dataframes.get(trial.trial_id), sweep),
        })
    return out


def _best_checkpoint(frame, sweep: Sweep) -> str | None:
    """The checkpoint of the trial's best evaluation (Ray Train keeps it: ``train.keep_best_by``)."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    if frame is None or sweep.metric not in frame or CHECKPOINT_PATH_KEY not in frame:
        return None
    rows = frame.dropna(subset=[sweep.metric, CHECKPOINT_PATH_KEY])
    if rows.empty:
        return None
    best = rows[sweep.metric].idxmax() if sweep.mode == "max" else rows[sweep.metric].idxmin()
    return str(rows.loc[best, CHECKPOINT_PATH_KEY])


def _last_line(trial) -> str:
    try:
        text = Path(trial.error_file).read_text().strip()
        return text.splitlines()[-1] if text else "failed"
    except (OSError, TypeError):
        return "failed"


def best_config(sweep: Sweep, trials: list[dict]) -> tuple[dict, float, int, list[dict]] | None:
    """The configuration with the best mean final metric over its seeds.

    Trials that ran to the end rank a configuration; a configuration whose trials were all
    stopped early ranks only when no configuration has a complete trial.
    """
    groups: dict[str, list[dict]] = {}
    for t in trials:
        if t[sweep.metric] is not None and not t["error"]:
            groups.setdefault(t["config_id"], []).append(t)
    complete = {k: [t for t in g if not t["stopped_early"]] for k, g in groups.items()}
    complete = {k: g for k, g in complete.items() if g}
    pool = complete or groups
    if not pool:
        return None
    sign = 1 if sweep.mode == "max" else -1
    scored = [(sum(t[sweep.metric] for t in g) / len(g), g) for g in pool.values()]
    value, group = max(scored, key=lambda item: sign * item[0])
    return group[0]["params"], value, len(group), group


def _best_yaml(sweep: Sweep, params: dict, value: float, n: int) -> str:
    cfg = sweep.trial_config(params, 0)
    head = (f"# Best config of sweep '{sweep.name}': {sweep.metric} = {value:.4f} "
            f"(mean of {n} seed(s)), searched: {json.dumps(params, default=str)}\n"
            f"# Train it: python -m zxvad.train --config best-config.yaml\n")
    return head + cfg.to_yaml()


def finish(sweep: Sweep, total: int, experiment_path: str, filesystem, uri: str, parent_run_id: str,
           out: Path, wall_s: float) -> int:
    """Summaries, the best config (file + MLflow artifact); 130 when the sweep was interrupted."""
    from zxvad.tracking.runs import close_sweep_run

    trials = trial_table(sweep, experiment_path, filesystem)
    unfinished = total - sum(t["status"] in ("TERMINATED", "ERROR") for t in trials)
    summary = {"sweep": sweep.name, "tracking_uri": uri, "experiment_path": experiment_path,
               "wall_s": round(wall_s, 1), "interrupted": unfinished > 0, "trials": trials}
    atomic_write(out / "trials.json", json.dumps(summary, indent=2, default=str))
    early = sum(t["stopped_early"] for t in trials)
    errors = [t for t in trials if t["error"]]
    print(f"\nsweep {sweep.name}: {total} trials: {total - unfinished - len(errors)} ended "
          f"({early} stopped early by {sweep.scheduler.kind}), {len(errors)} failed, "
          f"{unfinished} unfinished; {wall_s:.0f} s")
    for t in errors:
        print(f"  trial {t['trial_id']} failed: {t['error']}")
    if unfinished:
        print(f"sweep {sweep.name} interrupted; run the same command again to resume it")
        return 130
    best = best_config(sweep, trials)
    if best is None:
        print(f"error: no trial of sweep {sweep.name} reported {sweep.metric}", file=sys.stderr)
        return 1
    params, value, n, group = best
    atomic_write(out / "best-config.yaml", _best_yaml(sweep, params, value, n))
    run_id = parent_run_id
    close_sweep_run(uri, run_id, sweep.metric, value,
                    [out / "best-config.yaml", out / "trials.json"])
    print(f"best: {json.dumps(params, default=str)} with {sweep.metric} {value:.4f} (mean of {n} seed(s))")
    print(f"best config: {out / 'best-config.yaml'} (also an artifact of MLflow run {run_id})")
    sign = 1 if sweep.mode == "max" else -1
    top = max(group, key=lambda t: sign * t[sweep.metric])
    if top["best_checkpoint"]:
        print(f"best checkpoint (trial {top['trial_id']}, seed {top['seed']}): {top['best_checkpoint']}")
    print(f"compare: python -m tune.compare --experiment {sweep.name} --tracking-uri {uri}")
    return 1 if errors else 0


def prepare(argv: list[str] | None = None):
    """Parse and validate everything (sweep file, base config, shards, stores) with no Ray."""
    from zxvad.run import plan as planning
    from zxvad.tracking.store import check_reachable, resolve_uri

    packaged = ", ".join(sorted(p.stem for p in space.PACKAGED_DIR.glob("*.yaml")))
    parser = argparse.ArgumentParser(prog="python -m tune.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help=f"sweep file, or a packaged sweep ({packaged})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key (seeds=3, resources.workers=2) or a config key "
                             "of every trial (train.steps=100); repeatable")
    parser.add_argument("--out", default=None, help="summary and best config folder (default: sweeps/NAME)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over under a new name instead of resuming a sweep of the same name")
    args = parser.parse_args(argv)
    sweep = space.load(args.config, args.overrides)
    if args.fresh:
        sweep.name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    checked = set()  # every distinct set of shards the trials will read exists (and its fraction)
    variants = sweep.variants() if sweep.search not in space.MODEL_SEARCHES else [{"params": {}}]
    for variant in variants:
        cfg = sweep.trial_config(variant["params"], 0)
        key = (cfg.data.train_shards, cfg.data.donor_shards, cfg.data.fraction, tuple(cfg.eval.targets.items()))
        if key not in checked:
            planning.resolve_inputs(cfg)
            checked.add(key)
    planning.check_storage(sweep.base)
    uri = resolve_uri(sweep.base.tracking.tracking_uri)
    check_reachable(uri)
    out = Path(args.out or Path("sweeps") / sweep.name)
    return sweep, uri, out


def main(argv: list[str] | None = None) -> int:
    try:
        sweep, uri, out = prepare(argv)
    except (SweepError, ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ray import tune

    from tune.trial import Progress, RunStatus, run_trial, sweep_run
    from zxvad.run import launch

    variants = sweep.variants() if sweep.search not in space.MODEL_SEARCHES else []
    path, filesystem = launch.storage(sweep.base)
    experiment_path = f"{path.rstrip('/')}/{sweep.name}"
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "sweep.json"
    # "space" marks Tune's param_space layout: a sweep started with the older one is not resumed
    spec = json.dumps({"raw": sweep.raw, "variants": variants, "space": "config-keys"},
                      sort_keys=True, indent=1, default=str)
    resuming = tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem)
    if resuming and spec_file.exists() and spec_file.read_text() != spec:
        print(f"error: sweep '{sweep.name}' at {experiment_path} was started with another sweep file "
              "or other overrides; rerun with those, or pass --fresh", file=sys.stderr)
        return 2
    atomic_write(spec_file, spec)

    parent_run_id = sweep_run(sweep, uri, sweep.path.read_text())
    began = time.time()
    start_ray()
    trial_storage = f"{sweep.base.train.storage_path.rstrip('/')}/{sweep.name}/trials"
    if not is_s3(trial_storage):
        trial_storage = os.path.abspath(trial_storage)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, uri=uri, storage_path=trial_storage,
                             parent_run_id=parent_run_id),
        {"CPU": DRIVER_CPUS})
    total = len(variants) if variants else sweep.samples
    if resuming:
        print(f"resuming sweep {sweep.name} from {experiment_path}: finished trials are kept")
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=filesystem)
    else:
        concurrency = _concurrency(sweep)
        print(f"sweep {sweep.name}: {total} trials ({sweep.seeds} seed(s) each), {concurrency} at a time, "
              f"{sweep.search} search, scheduler {sweep.scheduler.kind}; MLflow {uri}", flush=True)
        tuner = tune.Tuner(trainable, param_space=param_space(sweep),
                           tune_config=_tune_config(sweep, concurrency),
                           run_config=tune.RunConfig(name=sweep.name, storage_path=path,
                                                     storage_filesystem=filesystem, verbose=0,
                                                     callbacks=[Progress(sweep.name, sweep.metric, total),
                                                                RunStatus(uri, sweep.name)]))
    tuner.fit()
    return finish(sweep, total, experiment_path, filesystem, uri, parent_run_id, out, time.time() - began)


if __name__ == "__main__":
    sys.exit(main())
