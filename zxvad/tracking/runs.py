"""The life of an MLflow run: a training run found by name or opened (params, config, datasets),
its status while it runs, a sweep trial's tags and attempts, and the sweep's own run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from zxvad.config import Config
from zxvad.names import ATTEMPT_METRIC, ROLE_TAG, RUN_NAME_TAG, SWEEP_TAG
from zxvad.redaction import redact, redacted_config, safe_params
from zxvad.tracking.store import (DEFAULT_TRACKING_URI, TrackingError, absolute_uri, check_reachable, experiment_id,
                                  resolve_uri)


def open_run(cfg: Config, run_name: str, parent_run_id: str = "",
             datasets: list[dict] | None = None) -> tuple[str, str]:
    """Find the run named ``run_name`` in the config's experiment or create it; log params.

    Args:
        parent_run_id: the sweep's run, when this run is one of its trials (a nested run).
        datasets: ``{"context", "name", "source", "digest"}`` per shard set, logged as inputs.

    Returns ``(tracking_uri, run_id)``. Honours ``tracking.on_unreachable``: ``local`` falls back
    to the default sqlite store when the server is down, ``fail`` raises.
    """
    uri = _reachable_uri(cfg)
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(experiment_id=experiment_id(uri, cfg.tracking.experiment,
                                                                   cfg.tracking.artifact_location))
    found = mlflow.search_runs([experiment.experiment_id], output_format="list",
                               filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    if found:
        return uri, found[0].info.run_id
    with mlflow.start_run(run_name=run_name, experiment_id=experiment.experiment_id,
                          tags={RUN_NAME_TAG: run_name}, parent_run_id=parent_run_id or None) as run:
        _log_datasets(datasets or [])
        _log_config(cfg)
        return uri, run.info.run_id


def _reachable_uri(cfg: Config) -> str:
    """The config's tracking URI, or the default sqlite store when its server is down and
    ``tracking.on_unreachable`` is ``local``; checked before MLflow is imported (seconds), so a
    server that is down fails fast."""
    uri = resolve_uri(cfg.tracking.tracking_uri)
    try:
        check_reachable(uri)
    except TrackingError:
        if cfg.tracking.on_unreachable != "local":
            raise
        fallback = absolute_uri(DEFAULT_TRACKING_URI)
        print(f"warning: MLflow at {redact(uri)} is unreachable; logging to {fallback} instead", flush=True)
        uri = fallback
    return uri


def _log_config(cfg: Config) -> None:
    """Every config value as a param of the active run (secrets left out) and the config file."""
    import mlflow

    params = safe_params(cfg)
    keys = list(params)
    for start in range(0, len(keys), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params({k: params[k] for k in keys[start:start + 100]})
    mlflow.log_text(redact(redacted_config(cfg).to_yaml()), "config.yaml")


def _log_datasets(datasets: list[dict]) -> None:
    """Each shard set as an MLflow dataset of the active run (its manifest digest, no data read)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for ref in datasets:
        dataset = MetaDataset(resolve_dataset_source(redact(ref["source"])), name=ref["name"],
                              digest=ref["digest"])
        mlflow.log_input(dataset, context=ref["context"])


@contextmanager
def recorded_status(uri: str, run_id: str) -> Iterator[None]:
    """The run is RUNNING inside the block, then FINISHED, KILLED (Ctrl-C) or FAILED."""
    if not run_id:
        yield
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    client.update_run(run_id, status="RUNNING")
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def end_named_run(uri: str, experiment: str, run_name: str, status: str) -> str | None:
    """End the run named ``run_name`` in ``experiment`` with ``status`` (a sweep's driver records
    how Tune saw a trial end); returns the run id, or None when no such run was opened."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                              max_results=1)
    if not runs:
        return None
    client.set_terminated(runs[0].info.run_id, status=status)
    return runs[0].info.run_id


def tag_trial(uri: str, run_id: str, tags: dict[str, str]) -> int:
    """Tag a sweep trial's run and count this start of it; returns the attempt (1, 2, ...)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    attempt = len(client.get_metric_history(run_id, ATTEMPT_METRIC)) + 1
    client.log_metric(run_id, ATTEMPT_METRIC, attempt, step=attempt)
    return attempt


def open_sweep_run(uri: str, sweep: str, params: dict[str, Any], sweep_file_text: str,
                   artifact_location: str = "") -> str:
    """The sweep-level run of experiment ``sweep`` (found by its role tag, or created)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = experiment_id(uri, sweep, artifact_location)
    found = client.search_runs([experiment], filter_string=f"tags.`{ROLE_TAG}` = 'sweep'")
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment, run_name=f"{sweep}-sweep",
                            tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_text(run.info.run_id, sweep_file_text, "sweep.yaml")
    return run.info.run_id


def close_sweep_run(uri: str, run_id: str, metric: str, value: float, files: list) -> None:
    """The sweep's best value of ``metric`` and its summary files on the sweep-level run, which
    then ends FINISHED."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    client.log_metric(run_id, f"best/{metric}", value)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
