"""What a training run logs into its MLflow run: rank 0's step metrics (with system metrics),
each evaluation's AUCs, efficiency figures and report files, and the registered G's tags.

G itself is logged as a scoring model by :func:`zxvad.serving.log_model`.
"""

from __future__ import annotations

import time
from typing import Any

from zxvad.config import Config
from zxvad.names import RUN_NAME_TAG, efficiency_metrics, loss_metric


class RunLogger:
    """Rank 0's handle on its training run: step and system metrics, and at the end G's tags.

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
