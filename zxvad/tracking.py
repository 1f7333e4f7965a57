"""MLflow, all of it: tracking URIs, tag names, what runs, trials and sweeps log, and loading G back.

One run per training run, resumed by name, no secrets. The driver opens (or finds) the run before
any Ray work, so an unreachable tracking server fails fast, and logs the shard sets it reads as
MLflow datasets; rank 0 then logs into that run by id, with system metrics, and logs G as a model
with a signature (registered when ``tracking.register_as`` names it). A sweep is one parent run
with one child run per trial (``mlflow.parentRunId``); ``tune.compare`` reads them back here.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from zxvad.config import Config
# Every tag and metric name zxvad writes is defined in zxvad.names; the tags are re-exported here
# for tune.compare and the tests.
from zxvad.names import (ATTEMPT_METRIC, CONFIG_TAG, GENERATOR_MODEL, PARENT_TAG, ROLE_TAG,  # noqa: F401
                         RUN_NAME_TAG, SEED_TAG, SWEEP_TAG, TRIAL_TAG, efficiency_metrics, is_auc, loss_metric)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|key", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
               "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN")


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; one line naming the tracking URI."""


def resolve_uri(explicit: str | None = None) -> str:
    """``explicit``, else MLFLOW_TRACKING_URI, else the default sqlite store; made absolute."""
    return absolute_uri(explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def absolute_uri(uri: str) -> str:
    """Relative sqlite and file URIs made absolute, so Ray workers in other folders agree."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri


def redact(value: Any) -> Any:
    """Replace the user:password of any URL and any known secret value (from the environment)
    inside strings by '***'."""
    if not isinstance(value, str):
        return value
    value = _URL_USERINFO.sub(r"\g<scheme>***@", value)
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4 and secret in value:
            value = value.replace(secret, "***")
    return value


def redacted_config(cfg: Config) -> Config:
    """A copy of ``cfg`` fit to persist (checkpoints, MLflow): URL userinfo and known secrets
    replaced, secret-named keys emptied. The run itself keeps the original in memory."""
    import dataclasses

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(k, v) for k, v in value.items()}
        if _SECRET_KEY.search(key) and isinstance(value, str):
            return "***" if value else value
        return redact(value)

    sections = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        sections[f.name] = dataclasses.replace(section, **{
            g.name: clean(g.name, getattr(section, g.name)) for g in dataclasses.fields(section)})
    return dataclasses.replace(cfg, **sections)


def safe_params(cfg: Config) -> dict[str, Any]:
    """All config values as MLflow params, with anything secret-looking removed."""
    params = {}
    for key, value in cfg.flat().items():
        if _SECRET_KEY.search(key):
            continue
        if isinstance(value, dict):
            for sub, item in value.items():
                if not _SECRET_KEY.search(sub):
                    params[f"{key}.{sub}"] = redact(str(item))
        else:
            params[key] = redact(value)
    return params


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl().rstrip("/")
                                     + "/health")
    if parts.username is not None:  # user:password@ is not part of the host: send it as basic auth
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            if reply.status >= 500:
                raise TrackingError(f"MLflow server {redact(uri)} answered {reply.status}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow server {redact(uri)} is unreachable ({reason}); start it or set "
                            "tracking.on_unreachable=local to log to sqlite:///mlflow.db") from None


def open_run(cfg: Config, run_name: str, parent_run_id: str = "",
             datasets: list[dict] | None = None) -> tuple[str, str]:
    """Find the run named ``run_name`` in the config's experiment or create it; log params.

    Args:
        parent_run_id: the sweep's run, when this run is one of its trials (a nested run).
        datasets: ``{"context", "name", "source", "digest"}`` per shard set, logged as inputs.

    Returns ``(tracking_uri, run_id)``. Honours ``tracking.on_unreachable``: ``local`` falls back
    to the default sqlite store when the server is down, ``fail`` raises.
    """
    uri = resolve_uri(cfg.tracking.tracking_uri)
    try:
        check_reachable(uri)  # before importing mlflow (seconds): a server that is down fails fast
    except TrackingError:
        if cfg.tracking.on_unreachable != "local":
            raise
        fallback = absolute_uri(DEFAULT_TRACKING_URI)
        print(f"warning: MLflow at {redact(uri)} is unreachable; logging to {fallback} instead", flush=True)
        uri = fallback
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
        params = safe_params(cfg)
        keys = list(params)
        for start in range(0, len(keys), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params({k: params[k] for k in keys[start:start + 100]})
        mlflow.log_text(redact(redacted_config(cfg).to_yaml()), "config.yaml")
        return uri, run.info.run_id


def default_artifact_root(uri: str, artifact_location: str = "") -> str | None:
    """``artifact_location`` (``tracking.artifact_location``; a folder is made absolute) if given;
    else beside the database for a ``sqlite:`` store (MLflow's default is ./mlruns of the current
    folder, wherever the command ran); else None (the store's own default)."""
    if artifact_location:
        return artifact_location if "://" in artifact_location else Path(artifact_location).resolve().as_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()


def experiment_id(uri: str, name: str, artifact_location: str = "") -> str:
    """The id of experiment ``name``, created with :func:`default_artifact_root` if new.

    An existing experiment keeps the artifact location it was made with (MLflow cannot move it):
    a different ``artifact_location`` is reported, not applied.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=default_artifact_root(uri, artifact_location))
    wanted = default_artifact_root(uri, artifact_location) if artifact_location else None
    if wanted and wanted.rstrip("/") != found.artifact_location.rstrip("/"):
        print(f"warning: MLflow experiment '{name}' keeps its artifact location {redact(found.artifact_location)}; "
              "tracking.artifact_location applies to new experiments", flush=True)
    return found.experiment_id


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


def _log_datasets(datasets: list[dict]) -> None:
    """Each shard set as an MLflow dataset of the active run (its manifest digest, no data read)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for ref in datasets:
        dataset = MetaDataset(resolve_dataset_source(redact(ref["source"])), name=ref["name"],
                              digest=ref["digest"])
        mlflow.log_input(dataset, context=ref["context"])


class RunLogger:
    """Rank 0's handle on its training run: step and system metrics, and at the end G as a model.

    The run is active in this process while training, so MLflow samples its system metrics
    (CPU, memory, GPU; ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds apart, 10 by default).
    """

    def __init__(self, uri: str, run_id: str):
        import mlflow

        self.uri, self.run_id = uri, run_id
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        mlflow.start_run(run_id=run_id, log_system_metrics=True)

    def close(self) -> None:
        import mlflow

        mlflow.end_run()

    def log_metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(loss_metric(k), float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def tag_version(self, cfg: Config, info: Any, aucs: dict[str, float]) -> None:
        """The registered version of the final G carries the AUCs as tags, so the registry alone
        can rank versions (G itself is logged by :func:`zxvad.serving.log_model`)."""
        register_as = cfg.tracking.register_as or None
        version = getattr(info, "registered_model_version", None)
        if register_as and version is not None:
            tags = {**{k: f"{v:.6f}" for k, v in aucs.items()}, RUN_NAME_TAG: cfg.tracking.run_name}
            for key, value in tags.items():
                self.client.set_model_version_tag(register_as, str(version), key, value)


def log_evaluation(run_id: str, results: dict, figures: dict, files: list, step: int | None = None,
                   uri: str | None = None) -> None:
    """AUCs (G, baselines, gains: :func:`zxvad.metrics.flat`), efficiency figures and report files."""
    import mlflow

    from zxvad import metrics as summary_metrics  # torch and sklearn: not on the driver's first path

    client = mlflow.MlflowClient(tracking_uri=uri)
    metrics = summary_metrics.flat(results)
    metrics.update({k: float(v) for k, v in efficiency_metrics(figures or {}).items()})
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step or 0)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")


CHECKPOINT_ARTIFACT = "checkpoint"  # inside a scoring model: G's weights, config, calibration


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


def log_sweep_result(uri: str, run_id: str, metric: str, value: float, files: list) -> None:
    """The sweep's best value of ``metric`` and its summary files, on the sweep-level run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    client.log_metric(run_id, f"best/{metric}", value)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)


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
