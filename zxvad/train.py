"""Train zxVAD with Ray Train: DDP workers, DALI batches, checkpoints, zero-shot AUC, MLflow.

``python -m zxvad.train [--config NAME|FILE] [--set key=value ...]``

Under ``ray job submit -- python -m zxvad.train ...`` (or with RAY_ADDRESS set) it joins that
cluster; otherwise it starts a local Ray. Everything is checked before any worker starts: the
config, every shard path, the checkpoint store and the MLflow server. Starting the same run again
(same name: ``tracking.run_name``, or by default the experiment plus a hash of the config without
``train.steps``) resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shards.storage import is_s3, parse_s3_url
from zxvad import config as config_lib
from zxvad.config import Config
from zxvad.resources import peak_rss_mb
from zxvad.tracking import redact

if TYPE_CHECKING:
    from zxvad.data import ShardInfo

# torch, the checkpoint code and MLflow are imported where they are used: a bad config or shard
# set is reported before them (torch alone takes seconds to import on a small machine).

# Environment a worker needs and may see: endpoints and URIs, never keys.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
                 "ZXVAD_REAL_CLIPS")


@dataclass
class Inputs:
    """The shards a run reads, resolved and checked once on the driver, before any cluster work;
    the workers' loaders take them as they are (``zxvad.data.checked_shards``)."""

    train: list[ShardInfo]
    donors: list[ShardInfo]
    targets: dict[str, list[ShardInfo]]
    # (absolute spec, fraction) of each set: what a worker re-checks when DALI fails
    sets: list[tuple[str, float]] = field(default_factory=list)


def resolve_inputs(cfg: Config, verify_hash: bool = False) -> Inputs:
    """Every shard set of the config resolved (fraction applied), checked against its manifest
    (sizes and index offsets; every sha256 too with ``verify_hash``) and checked for the loaders
    (indexes, clip metadata, a codec the workers' decoder reads); one clear error otherwise."""
    from zxvad.data import check_shards, verify_shard_set

    sets = []

    def resolve(spec: str, fraction: float = 1.0) -> list[ShardInfo]:
        sets.append((spec if is_s3(spec) else os.path.abspath(spec), fraction))
        paths = verify_shard_set(spec, fraction, full_hash=verify_hash)
        return check_shards(paths, gpu=cfg.train.use_gpu)

    if not cfg.data.train_shards:
        raise ValueError("config key 'data.train_shards' is empty: name G's training shards "
                         "(a folder with manifest.json or an s3:// prefix)")
    train = resolve(cfg.data.train_shards, cfg.data.fraction)
    donors = resolve(cfg.data.donor_shards) if cfg.data.donor_shards else train
    targets = {name: resolve(spec) for name, spec in cfg.eval.targets.items()}
    return Inputs(train, donors, targets, sets)


def dataset_refs(cfg: Config) -> list[dict]:
    """The shard sets a run reads, as MLflow datasets: context, name, source, manifest digest."""
    from zxvad.data.shardset import manifest_digest

    sets = [("training", cfg.data.train_shards, cfg.data.fraction)]
    if cfg.data.donor_shards:
        sets.append(("donor", cfg.data.donor_shards, 1.0))
    sets += [(f"target:{name}", spec, 1.0) for name, spec in cfg.eval.targets.items()]
    out: dict[tuple, dict] = {}
    for context, spec, fraction in sets:
        name = spec.rstrip("/").rsplit("/", 1)[-1] + ("" if fraction >= 1 else f"@{fraction:g}")
        source = spec if is_s3(spec) else os.path.abspath(spec)
        ref = {"context": context, "name": name, "source": source, "digest": manifest_digest(spec, fraction)}
        same = out.setdefault((name, source, ref["digest"]), ref)
        if same is not ref:  # MLflow keeps one input per dataset: one set in two roles joins them
            same["context"] += f",{context}"
    return list(out.values())


# Keys that may change between a run and its resume: more steps, a new experiments' artifact root.
NOT_IN_RUN_NAME = ("train.steps", "tracking.artifact_location")


def default_run_name(cfg: Config) -> str:
    """Stable per config, so that rerunning the same command resumes it (steps may grow)."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    old_name = {new: old for old, new in config_lib.RENAMED_KEYS.items()}  # runs started before resume
    flat = {old_name.get(k, k): v for k, v in cfg.flat().items() if k not in NOT_IN_RUN_NAME}
    digest = hashlib.sha256(repr(sorted(flat.items())).encode()).hexdigest()[:8]
    return f"{cfg.tracking.experiment}-{digest}"


def storage(cfg: Config):
    """``(storage_path, storage_filesystem)`` for RunConfig: a local folder or s3:// (+endpoint)."""
    path = cfg.train.storage_path
    if not is_s3(path):
        return os.path.abspath(path), None
    endpoint = cfg.train.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint:
        return path, None
    import pyarrow.fs

    scheme = "https" if endpoint.startswith("https") else "http"
    host = endpoint.split("://", 1)[-1]
    fs = pyarrow.fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                                 region=os.environ.get("AWS_REGION", "us-east-1"),
                                 connect_timeout=5, request_timeout=30)
    bucket, prefix = parse_s3_url(path)
    return f"{bucket}/{prefix}".rstrip("/"), fs


def check_storage(cfg: Config) -> None:
    """Fail before Ray when the checkpoint store cannot be written."""
    path = cfg.train.storage_path
    if not is_s3(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise ValueError(f"config key 'train.storage_path' = {path!r}: not writable")
        return
    from shards import s3

    if cfg.train.s3_endpoint:
        os.environ.setdefault("AWS_ENDPOINT_URL", cfg.train.s3_endpoint)
    try:
        bucket, _ = parse_s3_url(path)
        s3.check_bucket(s3.client(), bucket)
    except (ValueError, s3.S3Error) as err:
        raise ValueError(f"config key 'train.storage_path' = {path!r}: {err}") from None

# ----------------------------------------------------------------------------- on each worker


@dataclass
class TrainJob:
    """What every worker gets: the validated config, its resolved shards and its MLflow run.

    Workers read their data from ``inputs`` only; ``cfg.data.*_shards`` stay in the config as
    the record a checkpoint's config.yaml keeps (so it can start a run again)."""

    cfg: Config
    inputs: Inputs
    run_id: str = ""  # empty: no MLflow (--no-mlflow)
    tracking_uri: str = ""
    threads: int = 1


class _Progress:
    """The live line: step, main losses, steps/s and ETA (rank 0; Ray streams it to the driver)."""

    KEYS = ("l_rec", "l_g", "l_d", "l_n_total", "mask_area", "data_wait_share")

    def __init__(self, total: int, start: int):
        self.total, self.start, self.began = total, start, time.perf_counter()

    def rate(self, step: int) -> float:
        elapsed = time.perf_counter() - self.began
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def line(self, step: int, losses: dict) -> str:
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta != float("inf") else "?"
        terms = " ".join(f"{k} {losses[k]:.4f}" for k in self.KEYS if k in losses)
        return f"step {step}/{self.total} | {terms} | {rate:.2f} step/s | ETA {eta_text}"


def shard_defect(inputs: Inputs) -> Exception | None:
    """The driver's cheap shard-set check, run again: the ShardError of a set damaged since the run
    started, or None (the sets are sound, or cannot be reached now: an outage, worth a retry)."""
    from zxvad.data import ShardError, verify_shard_set

    for spec, fraction in inputs.sets:
        try:
            verify_shard_set(spec, fraction)
        except ShardError as err:
            return err
        except Exception:  # a storage outage: no verdict
            return None
    return None


@contextmanager
def data_errors_classified(inputs: Inputs):
    """A RuntimeError while DALI reads (DALI raises nothing else, for a corrupt shard as for an
    unreachable store) becomes a permanent ShardError when the shard sets are now damaged; it
    stays a RuntimeError, which Ray Train retries, when they check out."""
    try:
        yield
    except RuntimeError as err:
        defect = shard_defect(inputs)
        if defect is None:
            raise
        raise type(defect)(f"{defect} (DALI: {_dali_summary(str(err))})") from err


def _dali_summary(text: str) -> str:
    """The line of a DALI error that says what went wrong (after its pipeline traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1][:200]
    return next((line for line in lines if not line.startswith("Critical error")), "no message")[:200]


def _restore(state, rank: int) -> bool:
    """Load the latest checkpoint Ray hands this worker, if any; True when it did."""
    import ray.train

    from zxvad import checkpoint as ckpt

    resumed = ray.train.get_checkpoint()
    if resumed is None:
        return False
    with resumed.as_directory() as folder:
        saved, _ = ckpt.read(folder)
    state.load_state_dict(saved)
    if rank == 0:
        print(f"resumed from checkpoint at step {state.step}", flush=True)
    return True


def _loaders(job: TrainJob, step: int, rank: int, world: int, device: torch.device):
    """This rank's clip and donor iterators, reshuffled when a run resumes at ``step``."""
    from zxvad.data import ClipLoader, DonorLoader

    cfg = job.cfg
    size = (cfg.model.image_size, cfg.model.image_size)
    common = dict(batch_size=cfg.train.batch_size, size=size, shard_id=rank, num_shards=world,
                  device=device, threads=cfg.data.loader_threads,
                  shuffle_buffer=cfg.data.shuffle_buffer)
    # A resumed run reshuffles with a new seed so it does not replay the same clips.
    seed = cfg.data.seed + 7919 * step
    clips = ClipLoader(job.inputs.train, clip_len=cfg.model.T + 1, stride=cfg.data.frame_stride, seed=seed,
                       windows_per_clip=cfg.data.windows_per_clip, **common)
    donors = DonorLoader(job.inputs.donors, seed=seed + 1, windows_per_clip=clips.windows_per_clip, **common)
    return iter(clips), iter(donors)


def _evaluate(state, cfg: Config, targets: dict, device, step: int, folder: Path, last: bool):
    """Zero-shot AUC on every target, the report in ``folder/eval``; ``(results, figures, files)``."""
    from zxvad import evaluate as ev

    results = ev.evaluate_targets(state.G, targets, T=cfg.model.T,
                                  size=cfg.model.image_size, device=device,
                                  batch_size=cfg.eval.batch_size,
                                  top_frames=cfg.eval.top_frames, progress=False,
                                  patch_size=cfg.eval.patch_size,
                                  smooth_sigma=cfg.eval.smooth_sigma)
    figures = ev.efficiency(state.G, cfg, results) if last else {}
    files = ev.write_report(results, folder / "eval", T=cfg.model.T,
                            figures=figures, plots=cfg.eval.plots and last,
                            smooth_sigma=cfg.eval.smooth_sigma)
    print(f"evaluation at step {step}:\n{ev.auc_table(results)}", flush=True)
    return results, figures, files


def _evaluation_metrics(results: dict, figures: dict) -> dict:
    """What Ray (and Tune's schedulers) see of an evaluation."""
    from zxvad import metrics as metrics_lib

    out = metrics_lib.flat(results)  # G's AUCs, the baselines' and the gains, per target and mean
    out.update({f"efficiency/{k}": v for k, v in figures.items()})
    return out


def _save_and_report(job: TrainJob, state, losses: dict, device, run, evaluate_now: bool,
                     last: bool) -> None:
    """Rank 0 checkpoints (and evaluates, logs); every rank reports, as Ray Train requires."""
    import ray.train

    from zxvad import checkpoint as ckpt
    from zxvad import tracking
    from zxvad.ddp import unwrap

    step = state.step
    metrics = {"step": step, **{k: float(v) for k, v in losses.items()}}
    with tempfile.TemporaryDirectory() as folder:
        report_ckpt = None
        if ray.train.get_context().get_world_rank() == 0:
            ckpt.save(state, folder)
            if evaluate_now:
                with data_errors_classified(job.inputs):
                    results, figures, files = _evaluate(state, job.cfg, job.inputs.targets, device, step,
                                                        Path(folder), last)
                metrics.update(_evaluation_metrics(results, figures))
                if run is not None:
                    tracking.log_evaluation(run.run_id, results, figures, files if last else [],
                                            step=step, uri=run.uri)
            if last and run is not None:
                auc = {k: v for k, v in metrics.items() if k.startswith(("auc/", "auc_gain/"))}
                from zxvad.serving import log_model  # a pyfunc that serves per-frame scores

                info = log_model(unwrap(state.G), job.cfg,
                                 registered_model_name=job.cfg.tracking.register_as or None)
                run.tag_version(job.cfg, info, auc)
            report_ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=report_ckpt)


def train_loop_per_worker(loop_config: dict) -> None:
    """One DDP worker: its own DALI pipelines for its rank, the training step, reports."""
    import ray.train
    import ray.train.torch
    import torch

    from zxvad import tracking
    from zxvad.ddp import wrap_trained
    from zxvad.feeding import StepTimer, device_sync
    from zxvad.step import build_state, train_step

    job: TrainJob = loop_config["job"]
    cfg = job.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed * 1009 + rank)
    torch.set_num_threads(max(1, job.threads))

    state = build_state(cfg, device)
    resumed = _restore(state, rank)
    if world > 1:
        wrap_trained(state, device)
    clips, donors = _loaders(job, state.step, rank, world, device)
    run = tracking.RunLogger(job.tracking_uri, job.run_id) if rank == 0 and job.run_id else None
    if run and resumed:  # the run's history shows every restart and its step
        run.log_metrics({"resumed_from_step": state.step}, state.step)
    progress = _Progress(cfg.train.steps, state.step)
    timer = StepTimer()
    while state.step < cfg.train.steps:
        with data_errors_classified(job.inputs), timer.fetch():
            batch, donor = next(clips), next(donors)
        # lazy: the loss floats come back (one host sync) only at log and checkpoint steps
        losses = train_step(state, batch, donor)
        step = state.step
        last = step >= cfg.train.steps
        if rank == 0 and (step % cfg.train.log_every == 0 or last):
            losses["steps_per_s"] = progress.rate(step)
            losses["worker_peak_rss_mb"] = peak_rss_mb()
            losses.update(timer.summary(device_sync(device)))  # data wait vs compute per step
            print(progress.line(step, losses), flush=True)
            if run:
                run.log_metrics(losses, step)
        evaluate_now = bool(job.inputs.targets) and (
            last or bool(cfg.eval.eval_every and step % cfg.eval.eval_every == 0))
        if last or step % cfg.train.checkpoint_every == 0 or evaluate_now:
            _save_and_report(job, state, losses, device, run, evaluate_now, last)
            timer.restart()  # a checkpoint or evaluation is neither data wait nor step compute
    if run:
        run.close()


# ----------------------------------------------------------------------------- on the driver


def checkpoint_config(cfg: Config, mode: str = "max"):
    """Keep the ``train.keep_checkpoints`` best by ``train.keep_best_by``; Ray also keeps the latest.

    Checkpoints saved between evaluations carry no AUC: Ray ranks them last, so they stay only
    while they are the latest (what a resume needs). With no targets there is no AUC: keep the newest.
    """
    from ray.train import CheckpointConfig

    if not cfg.train.keep_best_by or not cfg.eval.targets:
        return CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)
    return CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                            checkpoint_score_attribute=cfg.train.keep_best_by, checkpoint_score_order=mode)


def build_trainer(job: TrainJob, run_name: str, callbacks: list | None = None, verbose: bool = False,
                  best_mode: str = "max"):
    """The Ray Train V2 TorchTrainer for this job (``callbacks``: e.g. Tune's reporter).

    Unless ``verbose``, Ray Train's own log lines stay in its log files (logs/train of the Ray
    session), out of the terminal; the driver prints the root cause of a failure itself.
    """
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from zxvad.feeding import worker_resources

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


def _stop_on_permanent_errors():
    """A Ray Train callback that turns a worker's permanent error into a controller error, which
    Ray Train's failure policy never retries (``FailureConfig.max_failures`` counts the rest)."""
    from ray.train import UserCallback

    class StopOnPermanentErrors(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            for rank, error in sorted(worker_exceptions.items()):
                cause = getattr(error, "_base_exc", error)  # Ray wraps it with its traceback text
                if isinstance(cause, PERMANENT_ERRORS):
                    first = (str(cause).strip().splitlines() or [""])[0]
                    raise PermanentError(f"worker {rank}: {type(cause).__name__}: {first}")

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


def make_job(cfg: Config, inputs: Inputs, run_id: str = "", uri: str = "") -> TrainJob:
    """The job for ``cfg``: one thread per CPU worker, a few to feed each GPU."""
    return TrainJob(cfg, inputs, run_id, uri, threads=4 if cfg.train.use_gpu else 1)


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
                             callbacks: list | None = None, verbose: bool = False):
    """``TorchTrainer.fit`` again from the last checkpoint when the checkpoint store was out.

    Worker failures are Ray Train's (``FailureConfig``); this covers the controller's own writes
    to ``storage_path``, up to ``train.max_failures`` times, waiting for the store to come back.
    """
    job = make_job(cfg, inputs, run_id, uri)
    for attempt in range(cfg.train.max_failures + 1):
        try:
            return build_trainer(job, run_name, callbacks, verbose).fit()
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


def summary(result, cfg: Config, run_name: str, run_id: str, uri: str) -> str:
    metrics = result.metrics or {}
    lines = ["", f"run {run_name}: finished at step {metrics.get('step', '?')}"]
    if any(k.startswith("auc/") for k in metrics):
        from zxvad import metrics as metrics_lib

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


def prepare(argv: list[str] | None = None):
    """Parse, validate and resolve everything a run needs, with no Ray work yet."""
    parser = argparse.ArgumentParser(prog="python -m zxvad.train", description=__doc__.split("\n\n")[0])
    config_lib.add_arguments(parser)
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if one with the same name has checkpoints")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines (they are always in /tmp/ray/session_latest/logs)")
    parser.add_argument("--verify-shards", action="store_true",
                        help="also compare every shard's sha256 with its manifest (reads every byte)")
    args = parser.parse_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    inputs = resolve_inputs(cfg, verify_hash=args.verify_shards)
    check_storage(cfg)
    name = default_run_name(cfg)
    if args.fresh:
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return args, cfg, inputs, name


TRAIN_WORKER = "RayTrainWorker"  # the actor class of Ray Train's workers, as Ray names their output


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
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

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


def main(argv: list[str] | None = None) -> int:
    try:
        args, cfg, inputs, run_name = prepare(argv)
        run_id, uri = "", ""
        if not args.no_mlflow:
            from zxvad import tracking

            uri, run_id = tracking.open_run(cfg, run_name, datasets=dataset_refs(cfg))
    except (config_lib.ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2

    import ray

    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():  # a test or notebook may have started Ray already
        # Ray's warnings (e.g. PlacementGroupCleaner's, with no dashboard) only with --verbose
        quiet = None if args.verbose else ray.LoggingConfig(log_level="ERROR")
        ray.init(address=address or None, include_dashboard=False if not address else None,
                 logging_config=quiet)
        if not args.verbose:
            show_only_worker_lines()
    print(f"run {run_name}: {cfg.train.num_workers} worker(s), {cfg.train.steps} steps, "
          f"{'GPU' if cfg.train.use_gpu else 'CPU'}; checkpoints in {redact(cfg.train.storage_path)}", flush=True)
    from zxvad import tracking

    try:
        with tracking.recorded_status(uri, run_id):  # FAILED or KILLED when it does not finish
            result = fit_with_storage_retries(cfg, inputs, run_name, run_id, uri, verbose=args.verbose)
    except Exception as err:  # Ray wraps worker errors; show the root cause in one line
        if not args.verbose:
            print(f"Ray's full log: {ray_logs_dir()} (or rerun with --verbose)", file=sys.stderr)
        permanent = permanent_cause(err)
        if permanent is not None:
            print(f"error: training stopped, not retried: {redact(str(permanent))}", file=sys.stderr)
            return 2
        print(f"error: training failed: {redact(str(err).strip().splitlines()[-1])}", file=sys.stderr)
        return 1
    print(summary(result, cfg, run_name, run_id, uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
