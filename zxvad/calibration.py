"""Calibrated anomaly scores for one camera: a threshold that means the same thing every day.

The per-video min-max of Liu et al. is an offline protocol: the worst frame of every video (or of
every sliding window) scores 1 whatever happens in the scene. A camera operator needs an absolute
scale. Calibration runs a trained G (no training) over some minutes of the camera's *normal*
footage and keeps the distribution of its per-frame PSNR; a new frame's calibrated score is

    score = (median - PSNR) / (median - q_0.01)

where median and q_0.01 (the 1 % lower quantile) are those of the normal footage. So a typical
normal frame scores about 0, and a frame scores 1 when its prediction is as bad as the worst 1 % of
normal frames; an alarm rate a (the share of normal frames allowed to alarm) is the threshold
(median - q_a) / (median - q_0.01). The trivial predictor copy_last is calibrated the same way on
the same frames, so that G's alarms can be read against a predictor that does nothing clever.

The statistics are one small JSON file (:data:`CALIBRATION_FILE`), stored beside the checkpoint's
``state.pt`` (or anywhere with ``--out``), copied into exports and logged with the MLflow model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
VERSION = 1
REFERENCE_RATE = 0.01  # score 1 = the PSNR of the worst 1 % of normal frames
LEVELS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
PREDICTORS = ("G", "copy_last")


class CalibrationError(ValueError):
    """A calibration that cannot be made, read or used; one line naming the file or value."""


@dataclass
class ScoreScale:
    """One predictor's PSNR distribution on normal footage, and the calibrated scale made of it."""

    frames: int
    median: float  # dB
    quantiles: dict[float, float]  # lower-tail PSNR quantile (dB) at each level >= 1 / frames

    @classmethod
    def fit(cls, psnr: np.ndarray) -> "ScoreScale":
        p = np.asarray(psnr, dtype=np.float64).ravel()
        if p.size < 1 / REFERENCE_RATE:
            raise CalibrationError(f"calibration needs at least {int(1 / REFERENCE_RATE)} scored "
                                   f"normal frames, got {p.size}")
        if not np.all(np.isfinite(p)):
            raise CalibrationError("calibration: PSNR values must be finite")
        levels = [a for a in LEVELS if a >= 1 / p.size]
        return cls(int(p.size), float(np.median(p)),
                   {a: float(np.quantile(p, a)) for a in levels})

    @property
    def scale(self) -> float:
        """dB between the median and the 1 % quantile (floored, so a still scene stays finite)."""
        return max(self.median - self.quantiles[REFERENCE_RATE], 1e-3)

    def score(self, psnr):
        """Calibrated score of a PSNR (a float or an array): 0 typical, 1 at the 1 % line."""
        return (self.median - np.asarray(psnr, dtype=np.float64)) / self.scale

    def quantile(self, rate: float) -> float:
        """The PSNR below which a share ``rate`` of normal frames fell (log-interpolated)."""
        levels = sorted(self.quantiles)
        if not levels[0] <= rate <= levels[-1]:
            raise CalibrationError(
                f"--alarm-rate {rate:g}: the calibration ({self.frames} normal frames) covers "
                f"{levels[0]:g} to {levels[-1]:g}; calibrate on more footage for rarer alarms")
        x = np.log([float(a) for a in levels])
        return float(np.interp(math.log(rate), x, [self.quantiles[a] for a in levels]))

    def threshold(self, rate: float) -> float:
        """The calibrated score above which a share ``rate`` of normal frames would alarm."""
        return float(self.score(self.quantile(rate)))

    def as_dict(self) -> dict:
        return {"frames": self.frames, "median_psnr": self.median, "scale_db": self.scale,
                "psnr_quantiles": {f"{a:g}": q for a, q in self.quantiles.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreScale":
        return cls(int(d["frames"]), float(d["median_psnr"]),
                   {float(a): float(q) for a, q in d["psnr_quantiles"].items()})


@dataclass
class Calibration:
    """The score scales of G and copy_last for one camera, with what they were measured on."""

    scales: dict[str, ScoreScale]
    T: int
    image_size: int
    sources: list[str] = field(default_factory=list)
    checkpoint: str = ""

    def scale(self, predictor: str = "G") -> ScoreScale:
        return self.scales[predictor]

    def as_dict(self) -> dict:
        return {"version": VERSION, "score": "(median - PSNR) / (median - q_0.01), per predictor",
                "T": self.T, "image_size": self.image_size, "checkpoint": self.checkpoint,
                "sources": self.sources,
                "predictors": {p: s.as_dict() for p, s in self.scales.items()}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration") -> "Calibration":
        try:
            scales = {p: ScoreScale.from_dict(s) for p, s in d["predictors"].items()}
            if "G" not in scales:
                raise KeyError("predictors.G")
            return cls(scales, int(d["T"]), int(d["image_size"]), list(d.get("sources", [])),
                       str(d.get("checkpoint", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"{where}: not a zxvad calibration ({err})") from None

    def save(self, path: str | Path) -> Path:
        from shards.storage import atomic_write

        return atomic_write(Path(path), json.dumps(self.as_dict(), indent=2))


def load(path: str | Path) -> Calibration:
    """A calibration file; :class:`CalibrationError` naming it when it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"calibration '{path}': no such file (make one with "
                               "`python -m zxvad.calibrate --checkpoint CKPT NORMAL_FOOTAGE...`)") from None
    except (OSError, ValueError) as err:
        raise CalibrationError(f"calibration '{path}': cannot be read ({err})") from None
    return Calibration.from_dict(data, f"calibration '{path}'")


def beside_checkpoint(checkpoint: str | Path) -> Path | None:
    """Where a checkpoint folder (or its state.pt, or an export file) keeps its calibration;
    None for an MLflow URI."""
    text = str(checkpoint)
    if "://" in text or text.startswith(("runs:/", "models:/")):
        return None
    path = Path(text)
    if path.is_dir():
        return path / CALIBRATION_FILE
    if path.name == "state.pt":
        return path.parent / CALIBRATION_FILE
    return path.with_name(path.name + "." + CALIBRATION_FILE)  # an export: FILE.calibration.json


def find(checkpoint: str | Path) -> Calibration | None:
    """The calibration stored with a checkpoint, an export or an MLflow scoring model; None where
    there is none."""
    text = str(checkpoint)
    if text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        from zxvad.tracking.read import served_checkpoint

        folder = served_checkpoint(text)
        path = folder / CALIBRATION_FILE if folder is not None else None
    else:
        path = beside_checkpoint(checkpoint)
    return load(path) if path is not None and path.exists() else None


def score_windows(G, windows, T: int, calibration=None) -> dict[str, np.ndarray]:
    """Per window: PSNR (dB) of G's prediction of the last frame and of copy_last's, and with a
    calibration, G's calibrated score.

    Args:
        G: called as ``G(frames).prediction``.
        windows: (B, T+1, 3, S, S) in [-1, 1].
        calibration: a :class:`zxvad.calibration.Calibration`, or None.
    """
    import torch

    from zxvad import scoring

    inputs, target = windows[:, :T], windows[:, T]
    with torch.no_grad():
        prediction = G(inputs).prediction
    out = {"psnr": scoring.psnr(prediction, target).cpu().numpy().astype(np.float64),
           "copy_last_psnr": scoring.psnr(inputs[:, -1], target).cpu().numpy().astype(np.float64)}
    if calibration is not None:
        out["score"] = calibration.scale("G").score(out["psnr"])
    return out


# ----------------------------------------------------------------------------- alarms on labels


def events(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of abnormal (1) labels as (first, stop) index pairs."""
    y = np.concatenate([[0], np.asarray(labels, dtype=np.int64), [0]])
    edges = np.flatnonzero(np.diff(y))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


@dataclass
class AlarmReport:
    """How a thresholded score did on labelled footage."""

    normal_frames: int
    false_alarms: int
    abnormal_frames: int
    detected_frames: int
    events: int
    detected_events: int

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.normal_frames if self.normal_frames else math.nan

    @property
    def frame_detection_rate(self) -> float:
        return self.detected_frames / self.abnormal_frames if self.abnormal_frames else math.nan

    @property
    def event_detection_rate(self) -> float:
        return self.detected_events / self.events if self.events else math.nan

    def as_dict(self) -> dict:
        return {**self.__dict__, "false_alarm_rate": self.false_alarm_rate,
                "frame_detection_rate": self.frame_detection_rate,
                "event_detection_rate": self.event_detection_rate}


def alarm_report(videos: list[tuple[np.ndarray, np.ndarray]]) -> AlarmReport:
    """Pooled over ``(alarms 0/1, labels 0/1)`` per video (scored frames only): false alarms on
    normal frames, abnormal frames alarmed, and abnormal events (runs of abnormal frames) with at
    least one alarmed frame."""
    counts = dict(normal_frames=0, false_alarms=0, abnormal_frames=0, detected_frames=0, events=0,
                  detected_events=0)
    for alarms, labels in videos:
        a, y = np.asarray(alarms, dtype=bool), np.asarray(labels, dtype=np.int64)
        counts["normal_frames"] += int((y == 0).sum())
        counts["false_alarms"] += int((a & (y == 0)).sum())
        counts["abnormal_frames"] += int((y == 1).sum())
        counts["detected_frames"] += int((a & (y == 1)).sum())
        for first, stop in events(y):
            counts["events"] += 1
            counts["detected_events"] += int(a[first:stop].any())
    return AlarmReport(**counts)


def alarm_table(reports: dict[str, AlarmReport], asked: str) -> str:
    """Plain text: per predictor, false-alarm rate on normal frames, abnormal frames and events
    detected (in %), and the counts behind them."""
    lines = [f"alarms at {asked} (calibrated on normal footage; scored frames of the labelled inputs)",
             f"{'predictor':<12}{'false alarms %':>16}{'abnormal frames %':>19}{'events %':>10}"
             f"{'normal':>9}{'abnormal':>10}{'events':>8}"]
    for name, r in reports.items():
        lines.append(f"{name:<12}{100 * r.false_alarm_rate:16.2f}{100 * r.frame_detection_rate:19.2f}"
                     f"{100 * r.event_detection_rate:10.2f}{r.normal_frames:9d}{r.abnormal_frames:10d}"
                     f"{r.detected_events:>4d}/{r.events:<3d}")
    return "\n".join(lines)
