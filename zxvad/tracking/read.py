"""The read side: what runs logged, read back. The training runs of an experiment or a sweep
(``tune.compare``), a run's metric histories (``zxvad.bench.curve``) and G logged as a model
(``zxvad.checkpoint``, ``zxvad.calibration``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zxvad.names import CHECKPOINT_ARTIFACT, PARENT_TAG, ROLE_TAG, is_auc
from zxvad.tracking.store import TrackingError

UNSUCCESSFUL = ("FAILED", "KILLED")


def training_runs(experiment: str, uri: str, include_failed: bool = False,
                  parent_run_id: str = "") -> list[Any]:
    """The training runs of ``experiment`` that logged an AUC (not the sweep-level runs), without
    the FAILED or KILLED ones unless ``include_failed``.

    ``parent_run_id`` keeps the children of one sweep run; runs logged before sweeps nested
    their trials carry no parent and are read only without it.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise TrackingError(f"MLflow experiment '{experiment}' not found at {uri} "
                            f"(experiments: {', '.join(names) or 'none'})")
    runs, token = [], None
    where = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    while True:
        page = client.search_runs([found.experiment_id], filter_string=where, max_results=1000,
                                  page_token=token)
        runs += [r for r in page if r.data.tags.get(ROLE_TAG) != "sweep"
                 and any(is_auc(k) for k in r.data.metrics)
                 and (include_failed or r.info.status not in UNSUCCESSFUL)]
        token = page.token
        if not token:
            break
    if not runs:
        child = f" among the children of run {parent_run_id}" if parent_run_id else ""
        failed = "" if include_failed else " that did not fail (--include-failed shows failed ones)"
        raise TrackingError(f"MLflow experiment '{experiment}' at {uri} has no run with an AUC "
                            f"metric{child}{failed}")
    return runs


def metric_history(uri: str, run_id: str, prefixes: tuple[str, ...]) -> tuple[int, dict[str, list]]:
    """A run's start time (ms since the epoch) and the history of each metric whose name starts
    with one of ``prefixes``, as ``[(step, timestamp_ms, value), ...]`` sorted by step.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise TrackingError(f"MLflow run {run_id} not found at {uri} ({err})") from None
    history = {}
    for key in run.data.metrics:
        if key.startswith(prefixes):
            history[key] = sorted((p.step, p.timestamp, p.value)
                                  for p in client.get_metric_history(run_id, key))
    return run.info.start_time, history


def served_checkpoint(uri: str) -> Path | None:
    """The checkpoint folder inside an MLflow scoring model (:func:`zxvad.serving.log_model`),
    downloaded; None for a model of another kind (an older run's ``mlflow.pytorch`` G)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    folder = local / "artifacts" / CHECKPOINT_ARTIFACT
    return folder if folder.is_dir() else None


def load_generator_model(uri: str, device, config_file: str) -> tuple[Any, str]:
    """G logged as an MLflow model (``runs:/ID/generator``, ``models:/NAME@alias``) and the text
    of its config file."""
    import mlflow
    import mlflow.pytorch
    import torch

    try:
        folder = served_checkpoint(uri)
        if folder is not None:  # a scoring model: G rebuilt from its config, weights loaded
            from zxvad.config import from_yaml_text
            from zxvad.models import build_generator

            config_text = (folder / config_file).read_text()
            G = build_generator(from_yaml_text(config_text).model)
            G.load_state_dict(torch.load(folder / "state.pt", map_location="cpu")["G"])
            return G.to(device), config_text
        G = mlflow.pytorch.load_model(uri, map_location=torch.device(device))
        G = getattr(G, "G", G)  # logged as PredictionOnly(G); older runs logged G itself
        config_text = mlflow.artifacts.load_text(uri.rstrip("/") + "/extra_files/" + config_file)
    except Exception as err:
        raise TrackingError(f"MLflow model '{uri}': cannot be loaded ({str(err).splitlines()[0]})") from None
    return G, config_text
