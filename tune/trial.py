"""What runs inside Ray for a sweep: the Tune function (one training run per trial) and callbacks.

Ray Train V2 style: the Tune function plans and launches its run through ``zxvad.run``, the same
door as ``python -m zxvad.train``; :class:`EvaluationReport` (Ray's public ``TuneReportCallback``) forwards rank 0's
evaluations to Tune so that ASHA can stop weak trials between evaluation rounds. Imported only
once the sweep file is valid.
"""

from __future__ import annotations

import json

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from tune import space
from tune.space import Sweep
from zxvad import config as config_lib
from zxvad import names
from zxvad.redaction import redact
from zxvad.run import plan as planning
from zxvad.run.launch import launch
from zxvad.tracking import runs as tracking_runs

ROUND = "eval_round"  # ASHA's time unit


class EvaluationReport(TuneReportCallback):
    """Ray Train's own Tune reporter, fed only the evaluations (rank 0's reports with ``metric``).

    Reports made only to save a checkpoint carry no AUC and are not forwarded, so ASHA counts
    evaluation rounds. The round comes from the step, so a resumed trial counts on from there.
    """

    def __init__(self, metric: str, steps: int, eval_every: int):
        super().__init__()
        self.metric, self.steps, self.eval_every = metric, steps, eval_every

    def after_report(self, run_context, metrics, checkpoint):
        if self.metric not in metrics[0]:  # rank 0, the worker that evaluates
            return
        values = {**metrics[0], ROUND: space.eval_round(int(metrics[0]["step"]), self.steps, self.eval_every)}
        super().after_report(run_context, [values, *metrics[1:]], checkpoint)


def trial_params(config: dict) -> tuple[dict, int]:
    """``(params, seed)`` of a trial from Tune's config: joint keys arrive as ``"a,b": [x, y]``."""
    params = {}
    for name, value in config.items():
        if name == space.SEED:
            continue
        keys = name.split(",")
        params.update({keys[0]: value} if len(keys) == 1 else dict(zip(keys, value)))
    return params, int(config.get(space.SEED, 0))


def run_trial(config: dict, sweep: Sweep, uri: str, storage_path: str, parent_run_id: str) -> None:
    """The Tune function: one training run (a child of the sweep's MLflow run), reporting to Tune.

    It goes through the same door as ``python -m zxvad.train``: the config validated with the
    trial's names and store, its inputs and store checked, the run planned, then launched with the
    same failure policy and storage retries.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    params, seed = trial_params(config)
    run_name = f"{sweep.name}-{trial_id}"
    cfg = config_lib.with_values(sweep.trial_config(params, seed), {
        "tracking.experiment": sweep.name, "tracking.run_name": run_name, "tracking.tracking_uri": uri,
        "train.storage_path": storage_path, "train.keep_best_by": sweep.metric})
    plan = planning.open_tracking(planning.plan_run(cfg), parent_run_id=parent_run_id, tags={
        names.SWEEP_TAG: sweep.name, names.TRIAL_TAG: trial_id,
        names.CONFIG_TAG: space.config_id(params), names.SEED_TAG: str(seed)})
    report = EvaluationReport(sweep.metric, cfg.train.steps, cfg.eval.eval_every)
    # The run's end status is not set here: Tune stops a trial (max_t, ASHA) by killing this actor,
    # so nothing in it can tell a stop from a crash. RunStatus, on the driver, records Tune's verdict.
    launch(plan, callbacks=[report], best_mode=sweep.mode)


class Progress(ray.tune.Callback):
    """A tqdm bar over trials, one line per ended trial, and each trial's end state.

    Tune saves the state with the experiment and restores it on resume, so a resumed sweep
    knows which trials had ended before.
    """

    def __init__(self, name: str, metric: str, total: int):
        self.name, self.metric, self.total = name, metric, total
        self.ended: dict[str, str] = {}  # trial id -> "done" | "error"
        self.bar = None

    def get_state(self) -> dict:
        return {"ended": dict(self.ended)}

    def set_state(self, state: dict) -> None:
        self.ended = dict(state.get("ended", {}))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "bar": None}

    def _bar(self):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=len(self.ended), desc=f"sweep {self.name}",
                            unit="trial")
        return self.bar

    def on_trial_start(self, iteration, trials, trial, **info):
        self._bar()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error")

    def _end(self, trial, how: str) -> None:
        if trial.trial_id in self.ended:
            return
        self.ended[trial.trial_id] = how
        last = trial.last_result or {}
        value = last.get(self.metric)
        text = f"{self.metric} {value:.4f}" if isinstance(value, float) else "no evaluation"
        bar = self._bar()
        bar.write(f"trial {trial.trial_id} {how} at step {last.get('step', '?')}: {text}")
        bar.update(1)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()


class RunStatus(ray.tune.Callback):
    """Each trial's MLflow run ends as Tune saw the trial end, on the driver.

    Tune stops a trial (it reached ``max_t``, or ASHA cut it) by killing the trial's actor with its
    TorchTrainer; no exception reaches the trial function, and rank 0 never closes its run, which
    would stay RUNNING. So: completed or stopped by the scheduler -> FINISHED, raised -> FAILED, still
    running or pending when the sweep ends (Ctrl+C) -> KILLED. A resumed trial's rank 0 sets its
    run RUNNING again.
    """

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                self._end(trial, "KILLED")

    def _end(self, trial, status: str) -> None:
        try:
            tracking_runs.end_named_run(self.uri, self.experiment, f"{self.experiment}-{trial.trial_id}", status)
        except Exception as err:  # a tracking hiccup must not stop the sweep
            print(f"warning: MLflow status {status} of trial {trial.trial_id} not recorded: "
                  f"{redact(str(err).splitlines()[0] if str(err) else type(err).__name__)}", flush=True)


def sweep_run(sweep: Sweep, uri: str, sweep_file_text: str) -> str:
    """The sweep-level MLflow run (found by tag, or created with the sweep's settings)."""
    params = {"search": sweep.search, "metric": f"{sweep.metric} ({sweep.mode})",
              "scheduler": sweep.scheduler.kind, "samples": sweep.samples, "seeds": sweep.seeds,
              "base": sweep.base_ref,
              "space": json.dumps({d.name: {d.kind: d.values} for d in sweep.space}, default=str)[:6000]}
    return tracking_runs.open_sweep_run(uri, sweep.name, params, sweep_file_text,
                                        sweep.base.tracking.artifact_location)
