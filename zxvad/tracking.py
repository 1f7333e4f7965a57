"""MLflow for training and evaluation: one run per training run, resumed by name, no secrets.

The driver opens (or finds) the run before any Ray work, so an unreachable tracking server fails
fast; rank 0 then logs into that run by id.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

from zxvad import metrics as summary_metrics
from zxvad.config import Config

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_NAME_TAG = "zxvad.run_name"
_SECRET_KEY = re.compile(r"(secret|password|token|access_key|credential|session_key)", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
               "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN")


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; one line naming the tracking URI."""


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """Relative sqlite and file URIs made absolute, so Ray workers in other folders agree."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri


def redact(value: Any) -> Any:
    """Replace any known secret value (from the environment) inside strings by '***'."""
    if not isinstance(value, str):
        return value
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4 and secret in value:
            value = value.replace(secret, "***")
    return value


def safe_params(cfg: Config) -> dict[str, Any]:
    """All config values as MLflow params, with anything secret-looking removed."""
    params = {}
    for key, value in cfg.flat().items():
        if _SECRET_KEY.search(key):
            continue
        if isinstance(value, dict):
            for sub, item in value.items():
                params[f"{key}.{sub}"] = redact(str(item))
        else:
            params[key] = redact(value)
    return params


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
            if reply.status >= 500:
                raise TrackingError(f"MLflow server {uri} answered {reply.status}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow server {uri} is unreachable ({reason}); start it or set "
                            "tracking.on_unreachable=local to log to sqlite:///mlflow.db") from None


def open_run(cfg: Config, run_name: str) -> tuple[str, str]:
    """Find the run named ``run_name`` in the config's experiment or create it; log params.

    Returns ``(tracking_uri, run_id)``. Honours ``tracking.on_unreachable``: ``local`` falls back
    to the default sqlite store when the server is down, ``fail`` raises.
    """
    import mlflow

    uri = absolute_uri(tracking_uri(cfg))
    try:
        check_reachable(uri)
    except TrackingError:
        if cfg.tracking.on_unreachable != "local":
            raise
        fallback = absolute_uri(DEFAULT_TRACKING_URI)
        print(f"warning: MLflow at {uri} is unreachable; logging to {fallback} instead", flush=True)
        uri = fallback
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(cfg.tracking.experiment)
    found = mlflow.search_runs([experiment.experiment_id], output_format="list",
                               filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    if found:
        return uri, found[0].info.run_id
    with mlflow.start_run(run_name=run_name, experiment_id=experiment.experiment_id,
                          tags={RUN_NAME_TAG: run_name}) as run:
        params = safe_params(cfg)
        keys = list(params)
        for start in range(0, len(keys), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params({k: params[k] for k in keys[start:start + 100]})
        mlflow.log_text(redact(cfg.to_yaml()), "config.yaml")
        return uri, run.info.run_id


def log_evaluation(run_id: str, results: dict, figures: dict, files: list, step: int | None = None,
                   uri: str | None = None) -> None:
    """AUCs (G, baselines, gains: :func:`zxvad.metrics.flat`), efficiency figures and report files."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    metrics = summary_metrics.flat(results)
    metrics.update({f"efficiency/{k}": float(v) for k, v in (figures or {}).items()})
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step or 0)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
