"""Zero-shot evaluation: frame-level AUC of a trained G on target test sets, with plots.

``python -m zxvad.evaluate --checkpoint PATH --target NAME=SHARDS [...]``

Protocol (Liu et al. 2018; docs/detection-and-serving.md): G predicts every frame from its T
predecessors; PSNR on [0, 1] images; the first T frames of a video are not scored; PSNR is
min-max normalised per video; score = 1 - normalised PSNR; one pooled ROC AUC per target.
The trivial predictors of ``scoring.BASELINES`` are scored on the same windows in the same pass,
and every AUC is printed beside theirs with ``gain`` = G minus the best of them.
The other protocols papers report (pooled AUC of the raw score, macro AUC over videos, AUPR and
EER, and with ``eval.smooth_sigma`` > 0 each on temporally smoothed scores) are scored for G and
every baseline alike and printed in a second table (names: :mod:`zxvad.metrics`).
The JSON written beside the plots holds every frame's raw PSNR, score and label, so anyone can
recompute the AUC, and the baselines' per-frame PSNRs.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from shards.storage import atomic_write
from zxvad import metrics, scoring
from zxvad.config import EvalConfig, ModelConfig
from zxvad.ddp import unwrap as _unwrap


@dataclass
class _VideoAccumulator:
    """Frames of one test video as they stream in (clips arrive in video order)."""

    video_id: str
    video_frames: int
    labels: np.ndarray
    psnr: dict[int, float] = field(default_factory=dict)
    baseline_psnr: dict[str, dict[int, float]] = field(
        default_factory=lambda: {name: {} for name in scoring.BASELINES})
    patch_psnr: dict[str, dict[int, float]] = field(  # worst-tile PSNR of G and each baseline
        default_factory=lambda: {name: {} for name in ("G", *scoring.BASELINES)})
    worst: list = field(default_factory=list)  # heap of (-psnr, frame, images): k lowest PSNRs

    def keep_worst(self, value: float, frame_index: int, images, k: int) -> None:
        """Keep this video's k lowest-PSNR frames for difference maps (``images`` made lazily)."""
        if not k or (len(self.worst) >= k and -value <= self.worst[0][0]):
            return
        candidate = (-value, frame_index, images())
        if len(self.worst) < k:
            heapq.heappush(self.worst, candidate)
        else:
            heapq.heapreplace(self.worst, candidate)


@dataclass
class TargetResult:
    name: str
    auc: float
    videos: list[dict]
    num_frames: int  # frames scored
    seconds: float
    top: list[dict]  # the highest-scoring frames with their images for difference maps
    baseline_aucs: dict[str, float] = field(default_factory=dict)  # trivial predictors, same frames
    patch_auc: float | None = None  # the worst-tile score (eval.patch_size > 0), beside auc
    patch_baseline_aucs: dict[str, float] = field(default_factory=dict)
    # {"G" or baseline: {metric name: value}} under every protocol (metrics.PROTOCOL_METRICS)
    protocols: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def gain(self) -> float:
        return metrics.gain(self.auc, self.baseline_aucs)


@torch.no_grad()
def evaluate_target(G: torch.nn.Module, name: str, shards: list[str], *, T: int, size: int,
                    device: torch.device, batch_size: int = 16, top_frames: int = 4,
                    progress: bool = True, patch_size: int = 0,
                    smooth_sigma: float = 0.0) -> TargetResult:
    """Score every scorable frame of one target set with G and with the trivial baselines.

    Windows are batched across clips and videos, so G runs at ``batch_size`` (the last batch may
    be short). The baselines predict from the very windows G sees, in the same pass.
    ``patch_size`` > 0 also scores every predictor by its worst tile (:func:`scoring.patch_psnr`).
    ``smooth_sigma`` > 0 also scores every protocol on scores smoothed over that many frames.
    """
    from tqdm import tqdm

    from zxvad.data import EvalLoader

    G = _unwrap(G)
    was_training = G.training
    G.eval()
    videos: dict[str, _VideoAccumulator] = {}  # insertion order is video order
    scored, compute = 0, 0.0
    bar = tqdm(desc=f"evaluate {name}", unit="frame", disable=not progress, leave=False)
    try:
        clips = EvalLoader(shards, size=(size, size), device=device)
        for batch, owners in _window_batches(clips, videos, T=T, batch_size=batch_size):
            compute += _score_batch(G, batch.to(device), owners, T=T, device=device,
                                    top_frames=top_frames, patch_size=patch_size)
            scored += len(owners)
            bar.update(len(owners))
    finally:
        bar.close()
        G.train(was_training)
    if not videos:
        raise ValueError(f"target '{name}': the test shards hold no clips")
    per_video, results = _finish_videos(name, videos, T)
    protocols = {p: metrics.protocol_metrics(r, T, smooth_sigma) for p, r in results.items()}
    auc = scoring.frame_auc(results.pop("G"), T)
    baseline_aucs = {b: scoring.frame_auc(r, T) for b, r in results.items()}
    top = _top_frames(videos, per_video, top_frames)
    result = TargetResult(name, auc, per_video, scored, compute, top, baseline_aucs,
                          protocols=protocols)
    if patch_size:
        patch = _patch_results(videos, per_video, T)
        result.patch_auc = scoring.frame_auc(patch.pop("G"), T)
        result.patch_baseline_aucs = {b: scoring.frame_auc(r, T) for b, r in patch.items()}
    return result


def _patch_results(videos: dict[str, _VideoAccumulator], per_video: list[dict], T: int
                   ) -> dict[str, list[scoring.VideoResult]]:
    """The worst-tile PSNRs as :class:`scoring.VideoResult` s; also written into ``per_video``."""
    results: dict[str, list[scoring.VideoResult]] = {p: [] for p in ("G", *scoring.BASELINES)}
    for entry in per_video:
        acc = videos[entry["video_id"]]
        labels = acc.labels.astype(np.uint8)
        entry["patch_psnr"] = {}
        for p, values in acc.patch_psnr.items():
            entry["patch_psnr"][p] = [values[i] for i in entry["frame_index"]]
            results[p].append(scoring.VideoResult(entry["video_id"],
                                                  np.array(entry["patch_psnr"][p]), labels))
    return results


def _accumulator(videos: dict[str, _VideoAccumulator], clip) -> _VideoAccumulator:
    """The clip's video (made on its first clip), with the clip's labels recorded."""
    acc = videos.get(clip.video_id)
    if acc is None:
        acc = videos[clip.video_id] = _VideoAccumulator(
            clip.video_id, clip.video_frames, np.full(clip.video_frames, -1, dtype=np.int64))
    labels = clip.labels.cpu().numpy().astype(np.int64)
    acc.labels[clip.first_frame:clip.first_frame + len(labels)] = labels
    return acc


def _window_batches(clips, videos: dict[str, _VideoAccumulator], *, T: int, batch_size: int
                    ) -> Iterator[tuple[torch.Tensor, list[tuple[_VideoAccumulator, int]]]]:
    """Prediction windows of consecutive clips (of any videos) in batches of ``batch_size``.

    Yields ``(windows (B, T+1, 3, H, W), owners)``: each window's video and absolute frame index.
    Only the last batch may be short.
    """
    from zxvad.data import prediction_windows

    if batch_size < 1:  # a batch that never fills would loop forever
        raise ValueError(f"batch size {batch_size} (--batch-size, eval.batch_size): expected at least 1")
    pending, owners = [], []
    for clip in clips:
        acc = _accumulator(videos, clip)
        windows, index, _ = prediction_windows(clip, T)
        index, start = index.tolist(), 0
        while start < len(index):
            take = min(batch_size - len(owners), len(index) - start)
            pending.append(windows[start:start + take])
            owners += [(acc, i) for i in index[start:start + take]]
            start += take
            if len(owners) == batch_size:
                yield torch.cat(pending), owners
                pending, owners = [], []
    if owners:
        yield torch.cat(pending), owners


def _score_batch(G: torch.nn.Module, batch: torch.Tensor, owners: list[tuple[_VideoAccumulator, int]],
                 *, T: int, device: torch.device, top_frames: int, patch_size: int = 0) -> float:
    """PSNR of G and of each baseline for a batch of windows, kept per video; returns G's seconds."""
    inputs, target = batch[:, :T], batch[:, T]
    began = time.perf_counter()
    prediction = G(inputs).prediction
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compute = time.perf_counter() - began
    values = scoring.psnr(prediction, target).cpu().tolist()
    predictions = scoring.baseline_predictions(inputs)
    baselines = {b: scoring.psnr(p, target).cpu().tolist() for b, p in predictions.items()}
    if patch_size:
        for p, pred in {"G": prediction, **predictions}.items():
            tiles = scoring.patch_psnr(pred, target, patch_size).cpu().tolist()
            for (acc, frame_index), value in zip(owners, tiles):
                acc.patch_psnr[p][frame_index] = value
    for j, ((acc, frame_index), value) in enumerate(zip(owners, values)):
        acc.psnr[frame_index] = value
        for b, psnrs in baselines.items():
            acc.baseline_psnr[b][frame_index] = psnrs[j]
        acc.keep_worst(value, frame_index, lambda: _images(prediction[j], target[j]), top_frames)
    return compute


def _finish_videos(name: str, videos: dict[str, _VideoAccumulator], T: int
                   ) -> tuple[list[dict], dict[str, list[scoring.VideoResult]]]:
    """Per-video report entries, and the :class:`scoring.VideoResult` s of G and each baseline."""
    per_video: list[dict] = []
    results: dict[str, list[scoring.VideoResult]] = {p: [] for p in ("G", *scoring.BASELINES)}
    for video_id, acc in videos.items():
        if (acc.labels < 0).any():
            missing = int((acc.labels < 0).sum())
            raise ValueError(f"target '{name}', video '{video_id}': {missing} frames never arrived "
                             "from the test shards (were the shards cut with a different overlap?)")
        expected = list(range(T, acc.video_frames))
        if sorted(acc.psnr) != expected:
            raise ValueError(f"target '{name}', video '{video_id}': scored {len(acc.psnr)} frames, "
                             f"expected {len(expected)} (frames {T}..{acc.video_frames - 1})")
        labels = acc.labels.astype(np.uint8)
        psnr = np.array([acc.psnr[i] for i in expected])
        results["G"].append(scoring.VideoResult(video_id, psnr, labels))
        baseline_psnr = {}
        for b, values in acc.baseline_psnr.items():
            baseline_psnr[b] = [values[i] for i in expected]
            results[b].append(scoring.VideoResult(video_id, np.array(baseline_psnr[b]), labels))
        per_video.append({"video_id": video_id, "frame_index": expected, "psnr": psnr.tolist(),
                          "score": scoring.normalize_scores(psnr).tolist(),
                          "label": acc.labels[T:].tolist(), "labels_all": acc.labels.tolist(),
                          "baseline_psnr": baseline_psnr})
    return per_video, results


def _images(prediction: torch.Tensor, frame: torch.Tensor) -> dict:
    to01 = lambda t: ((t.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return {"prediction": to01(prediction), "frame": to01(frame)}


def _top_frames(videos: dict[str, _VideoAccumulator], per_video: list[dict], k: int) -> list[dict]:
    """The k highest-scoring frames of the target among each video's lowest-PSNR candidates."""
    candidates = []
    for entry in per_video:
        psnr = np.asarray(entry["psnr"])
        low, high = float(psnr.min()), float(psnr.max())
        for neg_psnr, frame_index, images in videos[entry["video_id"]].worst:
            value = -neg_psnr
            score = 1.0 - (value - low) / (high - low) if high > low else 0.0
            label = int(entry["labels_all"][frame_index])
            candidates.append({"video_id": entry["video_id"], "frame_index": frame_index,
                               "psnr": value, "score": score, "label": label, **images})
    candidates.sort(key=lambda c: (-c["score"], c["psnr"]))
    return candidates[:k]


def evaluate_targets(G: torch.nn.Module, targets: dict[str, list[str]], model: ModelConfig,
                     settings: EvalConfig, device: torch.device, *, progress: bool = True
                     ) -> dict[str, TargetResult]:
    """:func:`evaluate_target` on every target, with G's frames (``model.T``, ``model.image_size``)
    and every ``eval.*`` setting (batch size, difference maps, worst-tile score, smoothing) taken whole."""
    return {name: evaluate_target(G, name, shards, T=model.T, size=model.image_size, device=device,
                                  batch_size=settings.batch_size, top_frames=settings.top_frames,
                                  progress=progress, patch_size=settings.patch_size,
                                  smooth_sigma=settings.smooth_sigma)
            for name, shards in targets.items()}


def auc_table(results: dict[str, TargetResult]) -> str:
    """A plain-text table: one row per target (G, each baseline, gain, frames, videos), then the
    mean; then per target every protocol (:func:`metrics.protocol_table`)."""
    extra = {r.name: {"frames": str(r.num_frames), "videos": str(len(r.videos))} for r in results.values()}
    flat = metrics.flat(results)
    protocols = metrics.protocol_table(flat)
    return metrics.table(flat, extra) + ("\n\n" + protocols if protocols else "")


def efficiency(G: torch.nn.Module, cfg, results: dict[str, TargetResult] | None = None,
               energy_joules: float | None = None) -> dict[str, float]:
    """Paper Table 3 figures: parameters, GMACs, checkpoint MB, inference FPS (and GPU joules)."""
    from zxvad.models import count_parameters, generator_gmacs

    G = _unwrap(G)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "G.pt"
        torch.save(G.state_dict(), path)
        megabytes = path.stat().st_size / 1e6  # MB as in the paper (10^6 bytes)
    figures = {"params": float(count_parameters(G)),
               "gmacs": float(generator_gmacs(G, cfg.model.image_size, cfg.model.T)),
               "checkpoint_mb": megabytes}
    if results:
        num_frames = sum(r.num_frames for r in results.values())
        seconds = sum(r.seconds for r in results.values())
        figures["inference_fps"] = num_frames / seconds if seconds > 0 else float("nan")
    if energy_joules is not None:
        figures["gpu_energy_j"] = energy_joules
    return figures


class EnergyMeter:
    """GPU energy from NVML's total-energy counter; a no-op without a GPU or nvidia-ml-py."""

    def __init__(self, device: torch.device):
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # no NVML library or no energy counter on this GPU
            self.handle = None

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        self.joules = (end - self.start) / 1000.0 if self.start is not None and end is not None else None

    def _read(self):
        if self.handle is None:
            return None
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # millijoules
        except Exception:
            return None


def write_report(results: dict[str, TargetResult], out_dir: str | Path, *, T: int,
                 figures: dict | None = None, plots: bool = True,
                 smooth_sigma: float = 0.0) -> list[Path]:
    """``results.json`` (every frame's PSNR, score and label) and the plots; returns the files.

    Plots per target: anomaly curves, difference maps, the ROC curves of G and the baselines and
    the histogram of G's scores on normal and abnormal frames.
    """
    from zxvad.config import check_target_name

    for name in results:  # before any file: a name like "../x" would write outside out_dir
        check_target_name(name, f"target '{name}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"T": T, "mean_auc": metrics.mean_auc(results), "smooth_sigma": smooth_sigma,
              "metrics": metrics.flat(results), "efficiency": figures or {},
              "targets": {name: {"auc": r.auc, "baseline_auc": r.baseline_aucs, "gain": r.gain,
                                 "patch_auc": r.patch_auc,
                                 "patch_baseline_auc": r.patch_baseline_aucs,
                                 "protocols": r.protocols,
                                 "scored_frames": r.num_frames, "videos": r.videos}
                          for name, r in results.items()}}
    files = [atomic_write(out / "results.json", json.dumps(report))]
    if plots:
        from zxvad import plots as plot_lib

        for name, r in results.items():
            files.append(plot_lib.anomaly_curves(r.videos, out / f"{name}-curves.png", title=name))
            if r.top:
                files.append(plot_lib.difference_maps(r.top, out / f"{name}-difference-maps.png",
                                                      title=name))
            files.append(plot_lib.roc_curves(r.videos, out / f"{name}-roc.png", title=name))
            files.append(plot_lib.score_histogram(r.videos, out / f"{name}-histogram.png",
                                                  title=name))
    return files


def storage_lines(targets: dict[str, str]) -> tuple[list[str], list[str]]:
    """How each target's test shards were stored, and one warning per lossy target."""
    from zxvad.data import is_lossless, shard_set_quality

    lines, warnings = [], []
    for name, spec in targets.items():
        quality = shard_set_quality(spec)
        lines.append(f"target {name}: {spec} stored {quality}")
        if not is_lossless(quality):
            warnings.append(f"warning: target {name} is stored lossy ({quality}): codec noise enters every "
                            "frame score; rebuild it with `python -m shards.build ... --split test` (lossless)")
    return lines, warnings


def parse_targets(items: list[str]) -> dict[str, str]:
    """``["ped2=shards/ped2", ...]`` -> ``{"ped2": "shards/ped2"}``; one clear error otherwise."""
    from zxvad.config import check_target_name

    targets = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--target '{item}': expected NAME=SHARDS, e.g. ped2=shards/ped2-test")
        targets[check_target_name(name, f"--target '{item}'")] = spec
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zxvad.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder (or its state.pt) or an MLflow model URI (runs:/...)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=SHARDS",
                        help="a test shard set (folder, manifest or s3:// prefix); repeatable; "
                             "default: the targets in the checkpoint's config")
    parser.add_argument("--out", default="eval-out", help="folder for results.json and plots")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per G call, across clips and videos (default: eval.batch_size)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--smooth-sigma", type=float, default=None, metavar="FRAMES",
                        help="also score every protocol on scores smoothed over time by a Gaussian "
                             "of this many frames (default: eval.smooth_sigma; 0 = off)")
    parser.add_argument("--mlflow-run", default=None, metavar="RUN_ID",
                        help="also log the AUCs, figures and plots into this MLflow run")
    args = parser.parse_args(argv)
    if args.smooth_sigma is not None and not args.smooth_sigma >= 0:
        parser.error(f"--smooth-sigma {args.smooth_sigma}: must be 0 (off) or more frames")
    try:
        from zxvad.checkpoint import load_generator
        from zxvad.data import verify_shard_set

        # --target names and shard sets are checked before G is loaded (seconds at paper scale)
        targets = parse_targets(args.target)
        resolved = {name: verify_shard_set(spec) for name, spec in targets.items()}
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        G, cfg = load_generator(args.checkpoint, device)
        if not targets:
            targets = dict(cfg.eval.targets)
            if not targets:
                raise ValueError("no --target given and the checkpoint's config names none")
            resolved = {name: verify_shard_set(spec) for name, spec in targets.items()}
        stored, warnings = storage_lines(targets)
        print("\n".join(stored))
        for warning in warnings:
            print(warning, file=sys.stderr)
        overrides = {"batch_size": args.batch_size, "smooth_sigma": args.smooth_sigma}  # None: the config's
        settings = replace(cfg.eval, **{k: v for k, v in overrides.items() if v is not None})
        sigma = settings.smooth_sigma
        with EnergyMeter(device) as meter:
            results = evaluate_targets(G, resolved, cfg.model, settings, device)
        figures = efficiency(G, cfg, results, meter.joules)
        files = write_report(results, args.out, T=cfg.model.T, figures=figures,
                             plots=not args.no_plots, smooth_sigma=sigma)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(auc_table(results))
    print("efficiency: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    print(f"wrote {', '.join(str(f) for f in files)}")
    if args.mlflow_run:
        from zxvad.tracking.logger import log_evaluation

        log_evaluation(args.mlflow_run, results, figures, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
