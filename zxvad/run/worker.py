"""What runs on each Ray Train worker: its DALI loaders, the training loop, checkpoints,
evaluations and (rank 0) MLflow logging. The driver hands every worker one :class:`TrainJob`."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from zxvad import checkpoint as ckpt
from zxvad import evaluate as ev
from zxvad import metrics as metrics_lib
from zxvad import names, serving
from zxvad.tracking.logger import RunLogger, log_evaluation
from zxvad.config import Config
from zxvad.data import ClipLoader, DonorLoader, ShardError, verify_shard_set
from zxvad.data.shardset import StorageUnreachable
from zxvad.ddp import unwrap, wrap_trained
from zxvad.feeding import StepTimer, device_sync
from zxvad.resources import peak_rss_mb
from zxvad.run.plan import Inputs
from zxvad.step import build_state, train_step


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


class Progress:
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


OUTAGE_WAIT_S = 60.0  # a worker waits this long for an unreachable store before Ray's retry


def shard_defect(inputs: Inputs, wait_s: float = OUTAGE_WAIT_S) -> Exception | None:
    """The driver's cheap shard-set check, run again: the ShardError of a set damaged since the run
    started, or None (the sets are sound, or cannot be reached: an outage, worth a retry). An
    unreachable store is waited for up to ``wait_s``, so that Ray Train's retry finds it back."""
    deadline, pause = time.monotonic() + wait_s, 1.0
    for spec, fraction in inputs.sets:
        while True:
            try:
                verify_shard_set(spec, fraction)
                break
            except ShardError as err:
                return err
            except StorageUnreachable:
                if time.monotonic() + pause > deadline:
                    return None
                time.sleep(pause)
                pause = min(2 * pause, 8.0)
            except Exception:  # anything else while reading: no verdict
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
    results = ev.evaluate_targets(state.G, targets, cfg.model, cfg.eval, device, progress=False)
    figures = ev.efficiency(state.G, cfg, results) if last else {}
    files = ev.write_report(results, folder / "eval", T=cfg.model.T,
                            figures=figures, plots=cfg.eval.plots and last,
                            smooth_sigma=cfg.eval.smooth_sigma)
    print(f"evaluation at step {step}:\n{ev.auc_table(results)}", flush=True)
    return results, figures, files


def _evaluation_metrics(results: dict, figures: dict) -> dict:
    """What Ray (and Tune's schedulers) see of an evaluation."""
    out = metrics_lib.flat(results)  # G's AUCs, the baselines' and the gains, per target and mean
    out.update(names.efficiency_metrics(figures))
    return out


def _save_and_report(job: TrainJob, state, losses: dict, device, run, evaluate_now: bool,
                     last: bool) -> None:
    """Rank 0 checkpoints (and evaluates, logs); every rank reports, as Ray Train requires."""
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
                    log_evaluation(run.run_id, results, figures, files if last else [],
                                   step=step, uri=run.uri)
            if last and run is not None:
                auc = {k: v for k, v in metrics.items() if names.is_auc_or_gain(k)}
                info = serving.log_model(unwrap(state.G), job.cfg,  # a pyfunc that serves per-frame scores
                                         registered_model_name=job.cfg.tracking.register_as or None)
                run.tag_version(job.cfg, info, auc)
            report_ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=report_ckpt)


def train_loop_per_worker(loop_config: dict) -> None:
    """One DDP worker: its own DALI pipelines for its rank, the training step, reports."""
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
    run = RunLogger(job.tracking_uri, job.run_id) if rank == 0 and job.run_id else None
    if run and resumed:  # the run's history shows every restart and its step
        run.log_metrics({"resumed_from_step": state.step}, state.step)
    progress = Progress(cfg.train.steps, state.step)
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
