"""Plots a person would rather look at than read: anomaly curves, difference maps, ROC curves and
score histograms (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shards.storage import atomic_path
from zxvad import scoring


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of 1s as (first, last) frame indices."""
    spans, start = [], None
    for i, value in enumerate(labels):
        if value and start is None:
            start = i
        if not value and start is not None:
            spans.append((start, i - 1))
            start = None
    if start is not None:
        spans.append((start, len(labels) - 1))
    return spans


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    return path


def anomaly_curves(videos: list[dict], path: str | Path, title: str = "") -> Path:
    """One panel per test video: anomaly score against frame index, labeled spans shaded red."""
    plt = _pyplot()
    path = Path(path)
    cols = min(3, len(videos))
    rows = math.ceil(len(videos) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.4 * rows), squeeze=False)
    for ax, video in zip(axes.flat, videos):
        labels = np.asarray(video["labels_all"] if "labels_all" in video else video["label"])
        for first, last in _spans(labels):
            ax.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.2, lw=0)
        copy_last = video.get("baseline_psnr", {}).get("copy_last")
        if copy_last:  # the trivial floor, faint, so G's curve reads against it
            ax.plot(video["frame_index"], scoring.normalize_scores(np.asarray(copy_last)),
                    color="tab:gray", lw=0.9, alpha=0.45, label="copy last")
        ax.plot(video["frame_index"], video["score"], color="tab:blue", lw=1.2, label="G")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(str(video["video_id"]), fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("anomaly score", fontsize=8)
        ax.tick_params(labelsize=7)
    if videos and "baseline_psnr" in videos[0]:
        axes.flat[0].legend(loc="upper left", fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(videos):]:
        ax.axis("off")
    fig.suptitle(f"{title}: anomaly score (1 - normalised PSNR); red = labeled anomaly; "
                 "grey = copy-last baseline", fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _pooled(videos: list[dict], psnr_of) -> tuple[np.ndarray, np.ndarray]:
    """Per-video min-max scores (the papers' protocol) and labels of all videos, pooled."""
    scores = [scoring.normalize_scores(np.asarray(psnr_of(v), dtype=np.float64)) for v in videos]
    labels = [np.asarray(v["label"]) for v in videos]
    return np.concatenate(scores), np.concatenate(labels)


def roc_curves(videos: list[dict], path: str | Path, title: str = "") -> Path:
    """ROC of G's pooled min-max scores beside each trivial baseline's, with their AUCs."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    predictors = {"G": lambda v: v["psnr"]}
    for b in videos[0].get("baseline_psnr", {}) if videos else []:
        predictors[b] = lambda v, b=b: v["baseline_psnr"][b]
    for name, psnr_of in predictors.items():
        scores, labels = _pooled(videos, psnr_of)
        if len(np.unique(labels)) != 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc_score(labels, scores)
        ax.plot(fpr, tpr, lw=1.8 if name == "G" else 1.0, alpha=1.0 if name == "G" else 0.7,
                label=f"{name} (AUC {100 * auc:.1f} %)")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("false-positive rate (normal frames flagged)", fontsize=8)
    ax.set_ylabel("true-positive rate (abnormal frames flagged)", fontsize=8)
    ax.set_title(f"{title}: ROC, pooled, per-video min-max", fontsize=9)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def score_histogram(videos: list[dict], path: str | Path, title: str = "") -> Path:
    """Histograms of G's scores on normal and on abnormal frames: min-max (left), raw PSNR (right)."""
    plt = _pyplot()
    path = Path(path)
    scores, labels = _pooled(videos, lambda v: v["psnr"])
    psnr = np.concatenate([np.asarray(v["psnr"], dtype=np.float64) for v in videos])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for ax, values, bins, xlabel in ((left, scores, np.linspace(0, 1, 41), "anomaly score (per-video min-max)"),
                                     (right, psnr, 40, "PSNR of G's prediction (dB)")):
        edges = np.histogram_bin_edges(values, bins=bins)
        for label, colour, name in ((0, "tab:blue", "normal"), (1, "tab:red", "abnormal")):
            chosen = values[labels == label]
            if chosen.size:
                ax.hist(chosen, bins=edges, color=colour, alpha=0.5, density=True,
                        label=f"{name} ({chosen.size})")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    left.set_ylabel("density", fontsize=8)
    left.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title}: G's scores on normal and abnormal frames", fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def difference_maps(top: list[dict], path: str | Path, title: str = "") -> Path:
    """Rows of frame, G's prediction and |prediction - frame| for the highest-scoring frames."""
    plt = _pyplot()
    path = Path(path)
    fig, axes = plt.subplots(len(top), 3, figsize=(7.5, 2.5 * len(top)), squeeze=False)
    for row, item in zip(axes, top):
        diff = np.abs(item["prediction"] - item["frame"]).mean(axis=2)
        row[0].imshow(item["frame"])
        row[1].imshow(item["prediction"])
        shown = row[2].imshow(diff, cmap="inferno", vmin=0)
        fig.colorbar(shown, ax=row[2], fraction=0.046)
        tag = "anomaly" if item["label"] else "normal"
        row[0].set_title(f"{item['video_id']} #{item['frame_index']} ({tag})", fontsize=8)
        row[1].set_title(f"prediction, PSNR {item['psnr']:.1f} dB", fontsize=8)
        row[2].set_title(f"|difference|, score {item['score']:.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(f"{title}: highest-scoring frames", fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def gain_curve(minutes: list[float], gains: dict[str, list[float]], path: str | Path,
               title: str = "") -> Path:
    """G's gain over the best trivial baseline (points) against training minutes, one line a target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in gains.items():
        ax.plot(minutes, values, marker="o", linewidth=2.5 if name == "mean" else 1.2, label=name)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(3, color="grey", linewidth=0.8, linestyle="--")  # the gain worth having: 3 points over the best trivial baseline
    ax.set_xlabel("training minutes (wall, evaluations included)")
    ax.set_ylabel("gain over best baseline (AUC points)")
    ax.set_title(title or "G minus the best trivial baseline")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def seed_curves(curves: dict[str, dict[str, tuple[list[int], list[float], list[float]]]],
                path: str | Path, title: str = "") -> Path:
    """Gain over the best trivial baseline against training steps, mean ± std over seeds: one
    panel per protocol, one line per configuration. ``curves[protocol][config] = (steps, mean, std)``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (protocol, lines) in zip(axes[0], curves.items()):
        for name, (steps, mean, std) in lines.items():
            ax.errorbar(steps, mean, yerr=std, marker="o", capsize=3, label=name)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axhline(3, color="grey", linewidth=0.8, linestyle="--")  # the goal: 3 points over the best baseline
        ax.set_xlabel("training steps")
        ax.set_title(protocol, fontsize=9)
    axes[0][0].set_ylabel("gain over best baseline (AUC points)")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
