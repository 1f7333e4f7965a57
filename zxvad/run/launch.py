"""The Ray Train plumbing of a run, on the driver: the TorchTrainer, its failure policy, storage
retries and checkpoint ranking. :func:`launch` is the one door through which both
``python -m zxvad.train`` and a Tune trial (``tune.trial.run_trial``) start a planned run.
"""

from __future__ import annotations

import os
import sys
import time

import pyarrow.fs
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from shards.storage import is_s3, parse_s3_url
from zxvad.config import Config
from zxvad.feeding import worker_resources
from zxvad.run.plan import Inputs, RunPlan
from zxvad.run.worker import TrainJob, train_loop_per_worker
from zxvad.redaction import redact

# Environment a worker needs and may see: endpoints and URIs, never keys.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
                 "ZXVAD_REAL_CLIPS")


def launch(plan: RunPlan, *, callbacks: list | None = None, verbose: bool = False, best_mode: str = "max"):
    """Train a planned run to its end and return Ray Train's ``Result``.

    Worker failures are retried by Ray Train (``train.max_failures``), a worker's permanent error
    (bad input) stops the run at once (:class:`PermanentError`), and an outage of the checkpoint
    store is waited out and resumed from the last checkpoint.

    Args:
        callbacks: more Ray Train callbacks, e.g. Tune's reporter of a trial.
        verbose: show Ray Train's own log lines.
        best_mode: ``max`` or ``min``: how ``train.keep_best_by`` ranks checkpoints.
    """
    return fit_with_storage_retries(plan.cfg, plan.inputs, plan.name, plan.run_id, plan.tracking_uri,
                                    callbacks=callbacks, verbose=verbose, best_mode=best_mode)


def storage(cfg: Config):
    """``(storage_path, storage_filesystem)`` for RunConfig: a local folder or s3:// (+endpoint)."""
    path = cfg.train.storage_path
    if not is_s3(path):
        return os.path.abspath(path), None
    endpoint = cfg.train.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint:
        return path, None
    scheme = "https" if endpoint.startswith("https") else "http"
    host = endpoint.split("://", 1)[-1]
    fs = pyarrow.fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                                 region=os.environ.get("AWS_REGION", "us-east-1"),
                                 connect_timeout=5, request_timeout=30)
    bucket, prefix = parse_s3_url(path)
    return f"{bucket}/{prefix}".rstrip("/"), fs


def checkpoint_config(cfg: Config, mode: str = "max") -> CheckpointConfig:
    """Keep the ``train.keep_checkpoints`` best by ``train.keep_best_by``; Ray also keeps the latest.

    Checkpoints saved between evaluations carry no AUC: Ray ranks them last, so they stay only
    while they are the latest (what a resume needs). With no targets there is no AUC: keep the newest.
    """
    if not cfg.train.keep_best_by or not cfg.eval.targets:
        return CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)
    return CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                            checkpoint_score_attribute=cfg.train.keep_best_by, checkpoint_score_order=mode)


def make_job(cfg: Config, inputs: Inputs, run_id: str = "", uri: str = "") -> TrainJob:
    """The job for ``cfg``: one thread per CPU worker, a few to feed each GPU."""
    return TrainJob(cfg, inputs, run_id, uri, threads=4 if cfg.train.use_gpu else 1)


def build_trainer(job: TrainJob, run_name: str, callbacks: list | None = None, verbose: bool = False,
                  best_mode: str = "max") -> TorchTrainer:
    """The Ray Train V2 TorchTrainer for this job (``callbacks``: e.g. Tune's reporter).

    Unless ``verbose``, Ray Train's own log lines stay in its log files (logs/train of the Ray
    session), out of the terminal; the driver prints the root cause of a failure itself.
    """
    cfg = job.cfg
    path, filesystem = storage(cfg)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # the patch logs each print besides printing it: twice
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=worker_resources(cfg.train.cpus_per_worker,
                                                                           cfg.data.loader_threads, cfg.train.use_gpu)),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=filesystem,
            checkpoint_config=checkpoint_config(cfg, best_mode),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": env},
            logging_config=LoggingConfig(log_level="INFO" if verbose else "CRITICAL"),
            callbacks=[_stop_on_permanent_errors(), *(callbacks or [])],
        ),
    )


# Errors no retry can fix: bad data or config (ShardError, ConfigError, CheckpointError and torch's
# own argument checks are ValueErrors). Anything else (a lost node, a storage outage) is retried.
PERMANENT_ERRORS = (ValueError,)


class PermanentError(RuntimeError):
    """A worker failed on bad input: the run stops at once (no retry) and the driver exits 2."""


class StopOnPermanentErrors(UserCallback):
    """Turns a worker's permanent error into a controller error, which Ray Train's failure policy
    never retries (``FailureConfig.max_failures`` counts the rest)."""

    def after_exception(self, run_context, worker_exceptions):
        for rank, error in sorted(worker_exceptions.items()):
            cause = getattr(error, "_base_exc", error)  # Ray wraps it with its traceback text
            if isinstance(cause, PERMANENT_ERRORS):
                first = (str(cause).strip().splitlines() or [""])[0]
                raise PermanentError(f"worker {rank}: {type(cause).__name__}: {first}")


def _stop_on_permanent_errors() -> StopOnPermanentErrors:
    return StopOnPermanentErrors()


def permanent_cause(error: BaseException | None) -> PermanentError | None:
    """The :class:`PermanentError` inside what ``fit`` raised, if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, PermanentError):
            return error
        seen.add(id(error))
        error = getattr(error, "controller_failure", None) or error.__cause__
    return None


# Ray Train's controller writes its run snapshot to storage_path itself and gives up on the first
# failed write; an S3 store that restarts or drops connections for a moment is worth waiting for.
_STORAGE_ERRORS = ("NETWORK_CONNECTION", "Could not connect", "curlCode", "Connection refused",
                   "Connection reset", "EndpointConnectionError", "Read timed out",
                   "INTERNAL_FAILURE", "InternalError", "ServiceUnavailable", "SlowDown")
STORAGE_RETRY_WAIT_S = 10.0


def is_storage_outage(error: BaseException) -> bool:
    text = str(error)
    return any(mark in text for mark in _STORAGE_ERRORS)


def fit_with_storage_retries(cfg: Config, inputs: Inputs, run_name: str, run_id: str, uri: str,
                             callbacks: list | None = None, verbose: bool = False, best_mode: str = "max"):
    """``TorchTrainer.fit`` again from the last checkpoint when the checkpoint store was out.

    Worker failures are Ray Train's (``FailureConfig``); this covers the controller's own writes
    to ``storage_path``, up to ``train.max_failures`` times, waiting for the store to come back.
    """
    job = make_job(cfg, inputs, run_id, uri)
    for attempt in range(cfg.train.max_failures + 1):
        try:
            return build_trainer(job, run_name, callbacks, verbose, best_mode).fit()
        except Exception as err:
            if attempt == cfg.train.max_failures or not is_storage_outage(err) or permanent_cause(err):
                raise
            print(f"warning: checkpoint store {redact(cfg.train.storage_path)} unreachable "
                  f"({redact(str(err).strip().splitlines()[-1][:160])}); resuming from the last checkpoint "
                  f"in {STORAGE_RETRY_WAIT_S:.0f} s (retry {attempt + 1}/{cfg.train.max_failures})",
                  file=sys.stderr, flush=True)
            time.sleep(STORAGE_RETRY_WAIT_S)
    raise AssertionError("unreachable")


def best_checkpoint(result, cfg: Config, mode: str = "max"):
    """``(checkpoint, value)`` of the kept checkpoint best by ``train.keep_best_by``, or None."""
    metric = cfg.train.keep_best_by
    scored = [(c, m[metric]) for c, m in (result.best_checkpoints or []) if metric and metric in m]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda item: item[1])
