"""The driver's terminal: Ray started quietly, which of Ray's streamed lines a user sees, where
Ray's full logs are, and the closing summary of a run.

Ray has no public API to filter the lines it streams from its processes to the driver by the
process they come from: ``ray.init(log_to_driver=False)`` drops every line, the training workers'
progress too, and Ray Train's ``LoggingConfig`` governs only Train's own loggers. So
:func:`show_only_worker_lines` replaces the printing handler of Ray's stream dispatcher
(``ray._private``), and does nothing where a Ray lacks it; this module is the only place in
zxvad that touches Ray's private modules.
"""

from __future__ import annotations

import os

import ray

from zxvad import metrics as metrics_lib
from zxvad import names
from zxvad.config import Config
from zxvad.run.launch import best_checkpoint
from zxvad.redaction import redact

TRAIN_WORKER = "RayTrainWorker"  # the actor class of Ray Train's workers, as Ray names their output


def start_ray(verbose: bool = False) -> None:
    """Join the cluster at RAY_ADDRESS or start a local Ray, unless this process already has one.

    Without ``verbose``, Ray's own warnings (e.g. the PlacementGroupCleaner's, with no dashboard)
    and its internal processes' lines stay in Ray's session logs."""
    if ray.is_initialized():  # a test or notebook may have started Ray already
        return
    address = os.environ.get("RAY_ADDRESS")
    quiet = None if verbose else ray.LoggingConfig(log_level="ERROR")
    ray.init(address=address or None, include_dashboard=False if not address else None,
             logging_config=quiet)
    if not verbose:
        show_only_worker_lines()


def worker_lines_to_show(batch: dict) -> list[str]:
    """Of a batch of lines Ray streams from its processes to the driver, those a user should see
    without ``--verbose``: what the training workers print (progress, evaluation tables) and their
    own ``warning:``/``error:`` lines. Ray's internals (the PlacementGroupCleaner's traceback, the
    controller's and the C++ core worker's lines, stray tracebacks) stay in Ray's session logs."""
    if TRAIN_WORKER not in (batch.get("actor_name") or ""):
        return []
    lines = batch.get("lines") or []
    if batch.get("is_err"):
        lines = [line for line in lines if line.startswith(("warning:", "error:"))]
    return lines


def show_only_worker_lines() -> bool:
    """Route what Ray streams to this driver through :func:`worker_lines_to_show`; False when
    this Ray has no such stream (then nothing is changed)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without that internal: its lines pass unfiltered
        return False

    printer = dict(dispatcher.handlers).get("ray_print_logs")
    if printer is None:
        return False

    def filtered(batch: dict) -> None:
        lines = worker_lines_to_show(batch)
        if lines:
            printer({**batch, "lines": lines})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)
    return True


def ray_logs_dir() -> str:
    """This Ray session's log folder (session_latest may be another local Ray's)."""
    try:
        import ray._private.worker

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # a Ray joined by address, or a Ray without that internal
        return "/tmp/ray/session_latest/logs"


def summary(result, cfg: Config, run_name: str, run_id: str, uri: str) -> str:
    """The closing lines of a run: its AUC table, latest and best checkpoints, its MLflow run."""
    metrics = result.metrics or {}
    lines = ["", f"run {run_name}: finished at step {metrics.get('step', '?')}"]
    if any(names.is_auc(k) for k in metrics):
        lines.append(metrics_lib.table(metrics))
    if result.checkpoint is not None:
        lines.append(f"latest checkpoint: {result.checkpoint.path}")
    best = best_checkpoint(result, cfg)
    if best is not None:
        lines.append(f"best checkpoint ({cfg.train.keep_best_by} {best[1]:.4f}): {best[0].path}")
    if run_id:
        lines.append(f"MLflow run: {run_id} at {redact(uri)}")
        if uri.startswith("sqlite:///"):
            lines.append(f"open it with: mlflow ui --backend-store-uri {uri}")
    return "\n".join(lines)
