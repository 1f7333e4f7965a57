"""Frame scores and the frame-level AUC (protocol of Liu et al. 2018, used by zxVAD's peers).

Per test video: PSNR of each predicted frame against the real one on [0, 1] images; the first
T frames have no prediction and are not scored; PSNR is min-max normalised within the video and
the anomaly score is 1 - normalised PSNR. Scores and 0/1 labels of all videos of a target set
are pooled into one ROC AUC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

MIN_MSE = 1e-10  # caps PSNR at 100 dB so that a perfect frame stays finite


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB per frame of [-1, 1] images, measured on their [0, 1] copies (peak 1).

    Args:
        pred, target: (B, C, H, W) in [-1, 1].

    Returns:
        (B,) float32; a perfect prediction gives 100 dB (MSE floored at 1e-10).
    """
    if pred.shape != target.shape:
        raise ValueError(f"psnr: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    diff = (pred.float() - target.float()) / 2  # [-1, 1] -> [0, 1] scales differences by 1/2
    mse = diff.pow(2).flatten(1).mean(dim=1).clamp_min(MIN_MSE)
    return 10 * torch.log10(1.0 / mse)


def patch_psnr(pred: Tensor, target: Tensor, patch: int) -> Tensor:
    """PSNR in dB of each frame's worst ``patch`` x ``patch`` tile (beyond the paper).

    Anomalies on real footage are small and local; a whole-frame PSNR averages them away. This
    score is the PSNR of the non-overlapping tile with the largest MSE (a frame whose sides are
    not multiples of ``patch`` drops the remainder). It is scored by the same protocol as
    :func:`psnr` (per-video min-max, pooled AUC) and reported beside it, never instead.

    Args:
        pred, target: (B, C, H, W) in [-1, 1].
        patch: tile side in pixels, at most min(H, W).

    Returns:
        (B,) float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"patch_psnr: prediction {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if not 1 <= patch <= min(pred.shape[-2:]):
        raise ValueError(f"patch_psnr: patch {patch} must lie in [1, {min(pred.shape[-2:])}]")
    diff = (pred.float() - target.float()) / 2
    tiles = torch.nn.functional.avg_pool2d(diff.pow(2).mean(dim=1, keepdim=True), patch)
    mse = tiles.flatten(1).max(dim=1).values.clamp_min(MIN_MSE)
    return 10 * torch.log10(1.0 / mse)


BASELINES = ("copy_last", "mean_T", "linear")


def baseline_predictions(inputs: Tensor) -> dict[str, Tensor]:
    """Trivial predictors of v_{T+1} from v_1..v_T: the floor every AUC must be read against.

    Args:
        inputs: (B, T, 3, H, W) in [-1, 1].

    Returns:
        ``{"copy_last": v_T, "mean_T": mean of v_1..v_T, "linear": clip(2 v_T - v_{T-1})}``,
        each (B, 3, H, W); ``linear`` equals ``copy_last`` when T = 1.
    """
    if inputs.dim() != 5:
        raise ValueError(f"baseline_predictions: inputs of shape {tuple(inputs.shape)}, "
                         "expected (B, T, 3, H, W)")
    last = inputs[:, -1]
    previous = inputs[:, -2] if inputs.shape[1] > 1 else last
    return {"copy_last": last, "mean_T": inputs.mean(dim=1),
            "linear": (2 * last - previous).clamp(-1, 1)}


def normalize_scores(psnrs: np.ndarray) -> np.ndarray:
    """Anomaly scores of one video: 1 - (p - min) / (max - min); a constant video gives zeros."""
    p = np.asarray(psnrs, dtype=np.float64)
    if p.size == 0:
        return p
    if not np.all(np.isfinite(p)):
        raise ValueError("normalize_scores: PSNR values must be finite")
    span = p.max() - p.min()
    if span == 0:
        return np.zeros_like(p)
    return 1.0 - (p - p.min()) / span


@dataclass
class VideoResult:
    """One test video: PSNR of its N - T predicted frames and the 0/1 labels of all N frames."""

    video_id: str
    psnr: np.ndarray  # (N - T,)
    labels: np.ndarray  # (N,)


class PooledScores(NamedTuple):
    """Scores and labels of all scored frames, with each video's slice of the pooled arrays."""

    scores: np.ndarray
    labels: np.ndarray
    videos: list[tuple[str, int, int]]  # (video_id, start, stop)

    def as_dict(self) -> dict:
        """Plain lists per video, ready for ``json.dump``."""
        return {vid: {"scores": self.scores[a:b].tolist(), "labels": self.labels[a:b].tolist()}
                for vid, a, b in self.videos}


def per_video_scores(videos: list[VideoResult], T: int) -> PooledScores:
    """Normalised anomaly scores and labels of every scored frame, pooled over ``videos``.

    Args:
        videos: one :class:`VideoResult` per test video.
        T: G's input frames; the first T frames of each video are not scored.

    Raises:
        ValueError: a video whose label count is not ``len(psnr) + T``.
    """
    scores, labels, spans, start = [], [], [], 0
    for v in videos:
        p, y = np.asarray(v.psnr).ravel(), np.asarray(v.labels).ravel()
        if len(y) != len(p) + T:
            raise ValueError(f"video '{v.video_id}': {len(y)} labels but {len(p)} scores + "
                             f"{T} unscored frames = {len(p) + T}")
        scores.append(normalize_scores(p))
        labels.append(y[T:].astype(np.int64))
        spans.append((v.video_id, start, start + len(p)))
        start += len(p)
    if not videos:
        return PooledScores(np.zeros(0), np.zeros(0, dtype=np.int64), [])
    return PooledScores(np.concatenate(scores), np.concatenate(labels), spans)


def frame_auc(videos: list[VideoResult], T: int) -> float:
    """Pooled frame-level ROC AUC of the anomaly scores (1 = abnormal label).

    Raises:
        ValueError: a length mismatch (see :func:`per_video_scores`), or scored frames of one
            class only (AUC undefined).
    """
    pooled = per_video_scores(videos, T)
    classes = np.unique(pooled.labels)
    if len(classes) != 2:
        have = "no scored frames" if len(classes) == 0 else f"only label {classes[0]}"
        ids = ", ".join(v.video_id for v in videos[:5]) + (", ..." if len(videos) > 5 else "")
        raise ValueError(f"frame AUC undefined: {have} among the scored frames of videos [{ids}] "
                         "(needs both normal 0 and abnormal 1)")
    from sklearn.metrics import roc_auc_score  # seconds to import: not before a command's own checks

    return float(roc_auc_score(pooled.labels, pooled.scores))


# The protocols papers report. Each takes the same per-video PSNRs, so G and every baseline are
# scored alike; the scores are anomaly scores (higher = more abnormal).
PROTOCOLS = ("micro_minmax", "micro_raw", "macro")
PROTOCOL_TITLES = {
    "micro_minmax": "pooled AUC, per-video min-max (Liu et al.; the papers' figure)",
    "micro_raw": "pooled AUC of the raw score (-PSNR, no per-video normalisation)",
    "macro": "mean of per-video AUCs (videos with one class only are left out)",
}


def smooth_scores(scores: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian temporal smoothing of one video's scores (sigma in frames; 0 returns a copy).

    The edges are padded by reflection, so a video's first and last frames are not pulled
    towards zero.
    """
    s = np.asarray(scores, dtype=np.float64)
    if sigma <= 0 or s.size < 2:
        return s.copy()
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(s, radius, mode="reflect" if s.size > radius else "edge")
    return np.convolve(padded, kernel, mode="valid")


def _video_scores(v: VideoResult, T: int, normalise: bool, sigma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(v.psnr, dtype=np.float64).ravel(), np.asarray(v.labels).ravel()
    if len(y) != len(p) + T:
        raise ValueError(f"video '{v.video_id}': {len(y)} labels but {len(p)} scores + "
                         f"{T} unscored frames = {len(p) + T}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"video '{v.video_id}': PSNR values must be finite")
    score = normalize_scores(p) if normalise else -p
    return smooth_scores(score, sigma), y[T:].astype(np.int64)


def protocol_scores(videos: list[VideoResult], T: int, protocol: str, sigma: float = 0.0
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, labels) per video under ``protocol``: min-max normalised for ``micro_minmax``,
    -PSNR otherwise; smoothed over time with a Gaussian of ``sigma`` frames when > 0."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return [_video_scores(v, T, protocol == "micro_minmax", sigma) for v in videos]


def _binary_metric(labels: np.ndarray, scores: np.ndarray, metric) -> float:
    if len(np.unique(labels)) != 2:
        return float("nan")
    return float(metric(labels, scores))


def protocol_auc(videos: list[VideoResult], T: int, protocol: str, sigma: float = 0.0) -> float:
    """Frame-level ROC AUC under one of :data:`PROTOCOLS`; NaN where undefined.

    ``macro`` averages the AUC of every video that holds both normal and abnormal scored frames;
    a video of one class only (Ped2's test videos 08-11 are abnormal in every frame) has no AUC
    and is left out of the mean, never counted as 0.5 or 1.
    """
    from sklearn.metrics import roc_auc_score

    per_video = protocol_scores(videos, T, protocol, sigma)
    if protocol == "macro":
        aucs = [_binary_metric(y, s, roc_auc_score) for s, y in per_video]
        aucs = [a for a in aucs if not np.isnan(a)]
        return float(np.mean(aucs)) if aucs else float("nan")
    scores = np.concatenate([s for s, _ in per_video]) if per_video else np.zeros(0)
    labels = np.concatenate([y for _, y in per_video]) if per_video else np.zeros(0, np.int64)
    return _binary_metric(labels, scores, roc_auc_score)


def pooled_aupr_eer(videos: list[VideoResult], T: int, sigma: float = 0.0) -> tuple[float, float]:
    """Average precision (abnormal = positive) and equal error rate of the per-video min-max
    scores, pooled; NaN where the scored frames hold one class only."""
    from sklearn.metrics import average_precision_score, roc_curve

    per_video = protocol_scores(videos, T, "micro_minmax", sigma)
    scores = np.concatenate([s for s, _ in per_video])
    labels = np.concatenate([y for _, y in per_video])
    if len(np.unique(labels)) != 2:
        return float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float(average_precision_score(labels, scores)), float((fpr[i] + fnr[i]) / 2)


def all_protocols(videos: list[VideoResult], T: int, sigma: float = 0.0) -> dict[str, float]:
    """Every protocol's AUC, plus ``aupr`` and ``eer``, of one predictor's videos."""
    out = {p: protocol_auc(videos, T, p, sigma) for p in PROTOCOLS}
    out["aupr"], out["eer"] = pooled_aupr_eer(videos, T, sigma)
    return out


# Pairs of a pooled AUC, by where their two frames come from (see pair_decomposition).
PAIR_KINDS = ("within_video", "across_mixed", "across_single_class")


def pair_decomposition(videos: list[VideoResult], T: int, protocol: str = "micro_minmax"
                       ) -> dict[str, dict[str, float]]:
    """A pooled AUC taken apart by the kind of (normal, abnormal) pair it averages over.

    The pooled AUC is the share of (normal frame, abnormal frame) pairs that the scores put in
    the right order (ties count one half), over every such pair of the pooled frames. Each pair
    is one of :data:`PAIR_KINDS`: both frames of one video (``within_video``: what the macro AUC
    measures, weighted by pairs); the abnormal frame from another video that also holds normal
    frames (``across_mixed``); or from a video of abnormal frames only (``across_single_class``,
    Ped2's 08-11, whose per-video min-max spreads them over the whole range whatever the
    predictor). Returns ``{kind: {"auc", "share"}}`` plus ``"all"`` (the pooled AUC itself,
    share 1); a kind without pairs reads NaN with share 0.
    """
    per_video = protocol_scores(videos, T, protocol)
    single = [len(np.unique(y)) == 1 for _, y in per_video]
    normal = [(k, s[y == 0]) for k, (s, y) in enumerate(per_video) if (y == 0).any()]
    abnormal = [(k, s[y == 1]) for k, (s, y) in enumerate(per_video) if (y == 1).any()]
    right = dict.fromkeys(("all", *PAIR_KINDS), 0.0)
    count = dict.fromkeys(("all", *PAIR_KINDS), 0)
    for kn, sn in normal:
        for ka, sa in abnormal:
            kind = ("within_video" if ka == kn else
                    "across_single_class" if single[ka] else "across_mixed")
            order = sa[None, :] - sn[:, None]
            hits = float((order > 0).sum() + 0.5 * (order == 0).sum())
            for key in ("all", kind):
                right[key] += hits
                count[key] += order.size
    total = count["all"]
    return {key: {"auc": right[key] / count[key] if count[key] else float("nan"),
                  "share": count[key] / total if total else 0.0} for key in right}
