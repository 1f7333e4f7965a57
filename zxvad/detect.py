"""Score any new camera's video with a trained G, out of the box (zero-shot: no adaptation).

``python -m zxvad.detect VIDEO_OR_FRAME_DIR [...] --checkpoint PATH|MLFLOW_URI|EXPORT [--out DIR]``

Frames are streamed (PyAV for anything FFmpeg reads, including rtsp:// and http:// URLs, or a
folder of images), resized to the checkpoint's square size and kept in a ring of T+1 frames;
G (a checkpoint, an MLflow model, or a TorchScript/ONNX file from ``zxvad.export``) predicts frame
T+1 of each window in batches (on the GPU when present) and each prediction's PSNR is its raw
score; the first T frames are not scored.

With a calibration (``python -m zxvad.calibrate``: stored beside the checkpoint, or
``--calibration FILE``) the anomaly score is on the camera's calibrated, absolute scale (0 = a
typical normal frame, 1 = as bad as the worst 1 % of its normal footage; see
``zxvad.calibration``), computed frame by frame as the video plays, and ``--alarm-rate 0.01``
sets the threshold that flags that share of normal frames. Without one (or with ``--window N``,
for viewing), the score is the offline protocol of Liu et al.: 1 - min-max normalised PSNR over
the whole video for files, or over the last ``--window`` frames for live streams. Its worst frame
scores 1 whatever happens, so its threshold does not carry from one day to the next.
Only a few floats per frame are kept, never frames, so memory stays flat however long the video.

Outputs per input, in ``--out``: ``NAME.csv`` and ``NAME.json`` (frame, time in s, raw PSNR,
score, and anomalous 0/1 with ``--threshold``), ``NAME-curve.png`` and, with ``--overlay``,
``NAME-overlay.mp4`` (G's difference heat map blended over the frames). With ``--threshold``
the anomalous frames are merged into segments and printed as time ranges (00:01.20-00:03.40).
With ``--labels`` (per-frame 0/1, one file per input) it prints the frame-level AUC of G beside
the trivial baselines (copy_last, mean_T, linear: scored on the same frames) and their gain; with a
calibrated threshold also the false-alarm rate on normal frames and the share of abnormal frames
and events detected, for G and for copy_last on its own calibrated scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from shards.storage import StagedFile, atomic_path, atomic_write
from zxvad import calibration as calibration_lib
from zxvad import metrics, scoring
from zxvad.resources import peak_rss_mb
from zxvad.video_io import VideoError, VideoSource, VideoWriter

LIVE_WINDOW = 300  # frames of the sliding normalisation of a live stream without --window
OVERLAY_MAX_WIDTH = 640
HEAT_FULL_SCALE = 0.25  # |prediction - frame| on [0, 1] shown at full heat
HEAT_ALPHA = 0.6  # blend weight of a full-heat pixel


@dataclass
class Segment:
    """Consecutive anomalous frames ``first..last`` (inclusive), with their time span in s."""

    first: int
    last: int
    start: float
    end: float  # the last frame's time plus one frame duration

    def __str__(self) -> str:
        return f"{format_time(self.start)}-{format_time(self.end)}"

    def as_dict(self) -> dict:
        return {"first_frame": self.first, "last_frame": self.last, "start_s": self.start,
                "end_s": self.end, "range": str(self)}


@dataclass
class Detection:
    """The scores of one input: the frames after the first T, in order."""

    name: str
    source: str
    fps: float
    num_frames: int  # frames decoded (the scored ones: num_frames - T)
    first_scored: int  # T
    time: np.ndarray
    psnr: np.ndarray
    score: np.ndarray
    normalisation: str  # "calibrated", "video" or "window:N"
    threshold: float | None = None
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the pass (decode + G)
    files: list[Path] = field(default_factory=list)
    stopped: bool = False  # the user interrupted the stream
    baseline_psnr: dict[str, np.ndarray] = field(default_factory=dict)  # trivial predictors, same frames
    minmax_score: np.ndarray | None = None  # calibrated runs: the whole-video min-max, for viewing

    @property
    def frame_index(self) -> np.ndarray:
        return np.arange(self.first_scored, self.first_scored + len(self.psnr))

    @property
    def anomalous(self) -> np.ndarray | None:
        return None if self.threshold is None else (self.score >= self.threshold).astype(np.int64)

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else float("nan")


def format_time(seconds: float) -> str:
    """``83.4`` -> ``"01:23.40"``; hours appear when needed (``"1:02:03.00"``)."""
    centis = int(round(seconds * 100))
    minutes, centis = divmod(centis, 6000)
    hours, minutes = divmod(minutes, 60)
    text = f"{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}"
    return f"{hours}:{text}" if hours else text


class SlidingNormaliser:
    """Score of each new PSNR against the last ``window`` PSNRs (itself included), causally."""

    def __init__(self, window: int):
        self.recent: deque[float] = deque(maxlen=window)

    def push(self, psnr: float) -> float:
        self.recent.append(psnr)
        low, high = min(self.recent), max(self.recent)
        return 0.0 if high == low else 1.0 - (psnr - low) / (high - low)


class SegmentTracker:
    """Merges consecutive anomalous frames into :class:`Segment` s as scores arrive."""

    def __init__(self, frame_duration: float):
        self.frame_duration = frame_duration
        self.open: Segment | None = None
        self.segments: list[Segment] = []

    def push(self, index: int, t: float, anomalous: bool) -> Segment | None:
        """Feed one scored frame; returns a segment when this frame closes one."""
        if anomalous:
            if self.open is None:
                self.open = Segment(index, index, t, t + self.frame_duration)
            else:
                self.open.last, self.open.end = index, t + self.frame_duration
            return None
        return self.close()

    def close(self) -> Segment | None:
        closed, self.open = self.open, None
        if closed is not None:
            self.segments.append(closed)
        return closed


class _CsvRows:
    """``NAME.csv`` written row by row into a hidden partial file, renamed when complete."""

    def __init__(self, path: Path, with_flag: bool):
        self.staged = StagedFile(path)
        self.file = open(self.staged.tmp, "w")
        self.file.write("frame,time_s,psnr,score" + (",anomalous\n" if with_flag else "\n"))

    def write(self, index: int, t: float, psnr: float, score: float, flag: int | None) -> None:
        tail = "" if flag is None else f",{flag}"
        self.file.write(f"{index},{t:.4f},{psnr:.4f},{score:.6f}{tail}\n")

    def finish(self) -> Path:
        self.file.close()
        return self.staged.commit()

    def abort(self) -> None:
        self.file.close()
        self.staged.discard()


def _heat_colors() -> torch.Tensor:
    import matplotlib

    return torch.from_numpy(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).float()


def blend_heat(display: np.ndarray, prediction: torch.Tensor, target: torch.Tensor,
               colors: torch.Tensor) -> np.ndarray:
    """A display frame with G's |prediction - frame| (inferno colours) blended over it.

    Args:
        display: (h, w, 3) uint8 RGB.
        prediction, target: (3, S, S) in [-1, 1].
        colors: (256, 3) colour table.
    """
    h, w = display.shape[:2]
    diff = (prediction - target).abs().mean(dim=0) / 2  # on [0, 1] images
    heat = (diff / HEAT_FULL_SCALE).clamp(0, 1)[None, None]
    heat = torch.nn.functional.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0, 1)
    color = colors[(heat * 255).long()]
    alpha = (HEAT_ALPHA * heat)[..., None]
    out = torch.from_numpy(display).float() * (1 - alpha) + color * alpha
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3, S, S) float in [-1, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class _VideoPass:
    """One input's pass: decode into a ring of T+1 frames, score batches with G and the baselines,
    stream the CSV (and overlay), track segments; all its outputs or none of them."""

    def __init__(self, G: torch.nn.Module, source: VideoSource, *, T: int, device: torch.device,
                 out: Path, name: str, batch_size: int, window: int | None, threshold: float | None,
                 overlay: bool, progress: bool, calibration=None):
        from tqdm import tqdm

        self.G, self.source, self.T, self.device, self.out, self.name = G, source, T, device, out, name
        self.batch_size, self.window, self.threshold, self.overlay = batch_size, window, threshold, overlay
        self.csv = _CsvRows(out / f"{name}.csv", threshold is not None)
        self.normaliser = SlidingNormaliser(window) if window is not None else None
        self.scale = calibration.scale("G") if calibration is not None and window is None else None
        self.tracker = SegmentTracker(1.0 / source.fps)
        self.colors = _heat_colors() if overlay else None
        self.writer: VideoWriter | None = None
        self.times, self.psnrs, self.scores = array("d"), array("d"), array("d")
        self.baselines = {b: array("d") for b in scoring.BASELINES}
        self.ring: deque[torch.Tensor] = deque(maxlen=T + 1)
        self.pending: list[tuple] = []  # (index, time, display, window (T+1, 3, S, S))
        self.files: list[Path] = []
        self.bar = tqdm(total=source.total, desc=name, unit="frame", disable=not progress,
                        dynamic_ncols=True)

    def run(self) -> tuple[int, bool]:
        """Decode and score every frame; returns (frames decoded, stopped by the user)."""
        decoded, stopped = 0, False
        try:
            for frame in self.source:
                decoded += 1
                self.bar.update(1)
                self.feed(frame)
        except KeyboardInterrupt:  # a live stream ends when its user says so: keep what was scored
            stopped = True
        self.flush()
        self.bar.close()
        if not stopped and self.source.total and decoded < self.source.total:  # cut short or dropped frames
            print(f"warning: {self.name}: the input ended after {decoded} of the {self.source.total} "
                  "frames its header declares (a truncated file?)", file=sys.stderr)
        return decoded, stopped

    def feed(self, frame) -> None:
        if self.overlay and self.writer is None:
            h, w = frame.display.shape[:2]
            self.writer = VideoWriter(self.out / f"{self.name}-overlay.mp4", w, h, self.source.fps)
        self.ring.append(_to_tensor(frame.model))
        if frame.index < self.T:  # no T predecessors yet: shown, not scored
            if self.overlay:
                self.writer.write(frame.display)
            return
        self.pending.append((frame.index, frame.time, frame.display, torch.stack(tuple(self.ring))))
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        """G and the baselines on the pending windows (the same frames), in one batch."""
        if not self.pending:
            return
        windows = torch.stack([w for *_, w in self.pending]).to(self.device, non_blocking=True)
        inputs, target = windows[:, :self.T], windows[:, self.T]
        prediction = self.G(inputs).prediction
        values = scoring.psnr(prediction, target).cpu().tolist()
        for b, guess in scoring.baseline_predictions(inputs).items():
            self.baselines[b].extend(scoring.psnr(guess, target).cpu().tolist())
        if self.overlay:
            prediction, target = prediction.float().cpu(), target.float().cpu()
        for j, ((index, t, display, _), p) in enumerate(zip(self.pending, values)):
            self.times.append(t)
            self.psnrs.append(p)
            if self.normaliser is not None or self.scale is not None:  # scores as it plays
                score = self.normaliser.push(p) if self.normaliser else float(self.scale.score(p))
                self.scores.append(score)
                self.row(index, t, p, score, announce=True)
            if self.overlay:
                self.writer.write(blend_heat(display, prediction[j], target[j], self.colors))
        self.pending.clear()

    def row(self, index: int, t: float, p: float, score: float, announce: bool = False) -> None:
        flag = None if self.threshold is None else int(score >= self.threshold)
        self.csv.write(index, t, p, score, flag)
        if flag is not None and (closed := self.tracker.push(index, t, bool(flag))) and announce:
            self.announce(closed)

    def announce(self, segment: Segment) -> None:
        self.bar.write(f"{self.name}: anomalous {segment} (frames {segment.first}-{segment.last})")

    def finish(self, decoded: int, stopped: bool, seconds: float) -> Detection:
        """Scores over the whole video (unless windowed), then the JSON, plot, overlay and CSV."""
        if decoded < self.T + 1:
            raise VideoError(f"input '{self.source.source}': {decoded} frame(s), needs at least "
                             f"T+1 = {self.T + 1} (G predicts frame T+1 from T frames)")
        as_array = lambda values: np.frombuffer(values, dtype=np.float64).copy()
        psnr, times = as_array(self.psnrs), as_array(self.times)
        if self.normaliser is not None or self.scale is not None:
            score = as_array(self.scores)
        else:
            score = scoring.normalize_scores(psnr)
            for index, t, p, s in zip(range(self.T, self.T + len(psnr)), times, psnr, score):
                self.row(index, t, p, s)
        if self.threshold is not None and (closed := self.tracker.close()) and (
                self.normaliser or self.scale):
            self.announce(closed)
        normalisation = ("calibrated" if self.scale is not None else
                         f"window:{self.window}" if self.normaliser else "video")
        det = Detection(name=self.name, source=self.source.source, fps=self.source.fps,
                        num_frames=decoded, first_scored=self.T, time=times, psnr=psnr, score=score,
                        threshold=self.threshold, segments=self.tracker.segments,
                        normalisation=normalisation, seconds=seconds, stopped=stopped,
                        baseline_psnr={b: as_array(v) for b, v in self.baselines.items()},
                        minmax_score=scoring.normalize_scores(psnr) if self.scale else None)
        self.files.append(_write_json(det, self.out / f"{self.name}.json"))
        self.files.append(plot_curve(det, self.out / f"{self.name}-curve.png"))
        if self.writer is not None:
            self.files.append(self.writer.finish())
            self.writer = None
        self.files.append(self.csv.finish())
        det.files = self.files
        return det

    def abort(self) -> None:
        self.bar.close()
        self.csv.abort()
        if self.writer is not None:
            self.writer.abort()
        for path in self.files:  # this input's outputs are all or nothing
            path.unlink(missing_ok=True)


@torch.no_grad()
def detect_video(G: torch.nn.Module, source: VideoSource, *, T: int, device: torch.device,
                 out_dir: str | Path, batch_size: int = 16, window: int | None = None,
                 threshold: float | None = None, overlay: bool = False, name: str | None = None,
                 progress: bool = True, calibration=None) -> Detection:
    """Score every frame after the first T of one input and write its outputs.

    Args:
        G: the generator in eval mode, on ``device``.
        source: the open input (its frames come at G's size).
        T: G's input frames; the first T are not scored.
        out_dir: where ``NAME.csv``, ``NAME.json``, ``NAME-curve.png`` (and the overlay) go.
        batch_size: windows per forward pass.
        window: normalise over the last ``window`` frames (live streams); None: the whole video,
            or the calibrated scale when ``calibration`` is given.
        threshold: mark frames with score >= threshold and merge them into segments.
        calibration: a :class:`zxvad.calibration.Calibration`: score on its absolute scale.
        overlay: also write ``NAME-overlay.mp4`` with the difference heat map.
        name: the output stem (default: the input's name).

    Returns:
        The :class:`Detection`, with the written files and the baselines' PSNRs.

    Raises:
        VideoError: the input cannot be decoded or has fewer than T+1 frames.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scan = _VideoPass(G, source, T=T, device=device, out=out, name=name or source.name,
                      batch_size=batch_size, window=window, threshold=threshold, overlay=overlay,
                      progress=progress, calibration=calibration)
    start = time.perf_counter()
    try:
        decoded, stopped = scan.run()
        return scan.finish(decoded, stopped, time.perf_counter() - start)
    except BaseException:
        scan.abort()
        raise


def _write_json(det: Detection, path: Path) -> Path:
    report = {
        "source": det.source, "fps": det.fps, "decoded_frames": det.num_frames,
        "first_scored_frame": det.first_scored, "normalisation": det.normalisation,
        "threshold": det.threshold, "stopped_by_user": det.stopped,
        "segments": [s.as_dict() for s in det.segments],
        "frames": {"index": det.frame_index.tolist(), "time_s": det.time.tolist(),
                   "psnr": det.psnr.tolist(), "score": det.score.tolist(),
                   "baseline_psnr": {b: v.tolist() for b, v in det.baseline_psnr.items()}},
    }
    if det.anomalous is not None:
        report["frames"]["anomalous"] = det.anomalous.tolist()
    if det.minmax_score is not None:
        report["frames"]["minmax_score"] = det.minmax_score.tolist()
    return atomic_write(path, json.dumps(report))


def plot_curve(det: Detection, path: str | Path) -> Path:
    """Anomaly score (top) and raw PSNR (bottom) against time; anomalous segments shaded red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for seg in det.segments:
        for ax in (top, bottom):
            ax.axvspan(seg.start, seg.end, color="tab:red", alpha=0.2, lw=0)
    top.plot(det.time, det.score, color="tab:blue", lw=1.0)
    if det.threshold is not None:
        top.axhline(det.threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {det.threshold:g}")
        top.legend(loc="upper right", fontsize=8)
    top.set_ylabel("anomaly score")
    if det.normalisation == "calibrated":
        top.set_title(f"{det.name}: calibrated score (0 typical, 1 = worst 1 % of normal footage)",
                      fontsize=10)
    else:
        top.set_ylim(-0.05, 1.05)
        norm = "whole video" if det.normalisation == "video" else f"last {det.normalisation[7:]} frames"
        top.set_title(f"{det.name}: 1 - normalised PSNR (over the {norm})", fontsize=10)
    bottom.plot(det.time, det.psnr, color="tab:gray", lw=0.8)
    bottom.set_ylabel("PSNR (dB)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def load_labels(path: str | Path) -> np.ndarray:
    """Per-frame 0/1 labels of one input: a ``.npy`` array, or text with 0/1 values
    separated by whitespace or commas.

    Raises:
        ValueError: a missing or unreadable file, or values other than 0 and 1.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False).ravel()
        else:
            labels = np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except (OSError, ValueError) as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else str(err).splitlines()[0]
        raise ValueError(f"--labels {path}: {reason}") from None
    if labels.size == 0 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"--labels {path}: expected one 0/1 value per frame")
    return labels.astype(np.uint8)


def labelled_video(det: Detection, labels: np.ndarray, path: str, truncated: bool
                   ) -> dict[str, scoring.VideoResult]:
    """G's and each baseline's :class:`scoring.VideoResult` of one labelled input.

    Raises:
        ValueError: labels that do not cover every decoded frame (or exceed them, unless the
            input was cut short by ``--max-frames`` or the user).
    """
    if len(labels) < det.num_frames or (len(labels) > det.num_frames and not truncated):
        raise ValueError(f"--labels {path}: {len(labels)} labels for the {det.num_frames} decoded "
                         f"frames of '{det.source}'")
    labels = labels[:det.num_frames]
    psnrs = {"G": det.psnr, **det.baseline_psnr}
    return {p: scoring.VideoResult(det.name, v, labels) for p, v in psnrs.items()}


def label_table(videos: list[dict[str, scoring.VideoResult]], T: int) -> str:
    """AUC of G and of the baselines per labelled input (where both classes occur) and pooled
    over all of them, by the evaluation protocol (min-max over each whole video)."""
    def scores(group: list[dict[str, scoring.VideoResult]]):
        aucs = {p: scoring.frame_auc([v[p] for v in group], T) for p in group[0]}
        return SimpleNamespace(auc=aucs.pop("G"), baseline_aucs=aucs)

    rows, skipped = {}, []
    groups = [(v["G"].video_id, [v]) for v in videos]
    if len(videos) > 1:
        groups.append(("pooled", videos))
    for name, group in groups:
        try:
            rows[name] = scores(group)
        except ValueError:  # one class only among the scored frames: AUC undefined
            skipped.append(name)
    lines = [metrics.table(metrics.flat(rows), mean_row=False)] if rows else []
    if skipped:
        lines.append(f"AUC undefined (one label class only among the scored frames): {', '.join(skipped)}")
    return "\n".join(lines)


def alarm_reports(videos: list[dict[str, scoring.VideoResult]], T: int, calibration,
                  threshold: float | None = None, alarm_rate: float | None = None
                  ) -> dict[str, "calibration_lib.AlarmReport"]:
    """Alarms of G and of copy_last, each on its own calibrated scale (at ``alarm_rate``, or at
    calibrated score >= ``threshold``), against the labels of the scored frames, pooled."""
    reports = {}
    for predictor in calibration_lib.PREDICTORS:
        scale = calibration.scale(predictor)
        line = scale.threshold(alarm_rate) if alarm_rate is not None else threshold
        reports[predictor] = calibration_lib.alarm_report(
            [(scale.score(v[predictor].psnr) >= line, np.asarray(v[predictor].labels)[T:])
             for v in videos])
    return reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; bad values exit with argparse's one line and code 2."""
    parser = argparse.ArgumentParser(prog="python -m zxvad.detect", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FRAME_DIR",
                        help="video files, frame folders or stream URLs (rtsp://, http://, ...)")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder (or its state.pt) or an MLflow model URI (runs:/...)")
    parser.add_argument("--out", default="detect-out", help="output folder (default: detect-out)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass (default: the checkpoint's eval.batch_size)")
    parser.add_argument("--window", type=int, default=None, metavar="N",
                        help="min-max normalise scores over the last N frames, for viewing "
                             f"(default for rtsp/rtmp/udp URLs without a calibration: {LIVE_WINDOW}); "
                             "otherwise the calibrated score, or the whole-video min-max")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="mark frames with score >= T and print anomalous segments as time ranges")
    parser.add_argument("--alarm-rate", type=float, default=None, metavar="A",
                        help="with a calibration: the threshold that flags a share A of the camera's "
                             "normal frames (e.g. 0.01); instead of --threshold")
    parser.add_argument("--calibration", default=None, metavar="FILE",
                        help="calibration of this camera (python -m zxvad.calibrate; default: the one "
                             "stored beside the checkpoint, if any)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore any calibration: score by the per-video min-max (Liu et al.)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write NAME-overlay.mp4: the difference heat map over the frames")
    parser.add_argument("--size", type=int, default=None,
                        help="expected frame size; an error if the checkpoint was trained at another")
    parser.add_argument("--max-frames", type=int, default=None, help="stop each input after N frames")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of frame folders (default 25; videos carry their own)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for G (default: torch's; 1 is fastest for small models or "
                             "when several detectors share the CPU)")
    parser.add_argument("--labels", action="append", default=None, metavar="FILE",
                        help="per-frame 0/1 labels (.npy, or text), once per input in order: prints "
                             "the AUC of G beside the trivial baselines (copy_last, mean_T, linear)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.inputs):
        parser.error(f"--labels given {len(args.labels)} time(s) for {len(args.inputs)} input(s): "
                     "give one labels file per input, in order")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--window", args.window, 2),
                             ("--max-frames", args.max_frames, 1), ("--size", args.size, 1),
                             ("--threads", args.threads, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} {value}: must be at least {low}")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps {args.fps}: must be positive")
    if args.alarm_rate is not None:
        if args.threshold is not None:
            parser.error("--alarm-rate and --threshold: give one of them")
        if not 0 < args.alarm_rate < 1:
            parser.error(f"--alarm-rate {args.alarm_rate}: must lie in (0, 1), e.g. 0.01")
        if args.window is not None or args.no_calibration:
            parser.error("--alarm-rate needs the calibrated score: drop --window / --no-calibration")
    return args


def find_calibration(args) -> "calibration_lib.Calibration | None":
    """``--calibration``, else the one stored with the checkpoint; None when there is none or
    it is not wanted (--no-calibration). An --alarm-rate with none is an error."""
    found = None
    if not args.no_calibration:
        found = (calibration_lib.load(args.calibration) if args.calibration
                 else calibration_lib.find(args.checkpoint))
    if args.alarm_rate is not None and found is None:
        raise calibration_lib.CalibrationError(
            f"--alarm-rate needs a calibration: none beside '{args.checkpoint}' (run `python -m "
            "zxvad.calibrate --checkpoint CKPT NORMAL_FOOTAGE...`, or give --calibration FILE)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        labels = [load_labels(p) for p in args.labels] if args.labels else [None] * len(args.inputs)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        from zxvad.serving import load_predictor  # checkpoints, MLflow models and exports

        G, cfg = load_predictor(args.checkpoint, device, args.size)
        calibration = find_calibration(args)
        if calibration is not None and (calibration.T, calibration.image_size) != (
                cfg.model.T, cfg.model.image_size):
            raise calibration_lib.CalibrationError(
                f"calibration of T={calibration.T} at {calibration.image_size}px does not fit G "
                f"(T={cfg.model.T} at {cfg.model.image_size}px): calibrate this checkpoint")
        threshold = args.threshold
        if args.alarm_rate is not None:
            threshold = calibration.scale("G").threshold(args.alarm_rate)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if calibration is not None and args.window is None:
        asked = (f"alarm rate {args.alarm_rate:g}" if args.alarm_rate is not None else
                 f"threshold {threshold:g}" if threshold is not None else "no threshold")
        print(f"calibrated score ({calibration.scale('G').frames} normal frames); {asked}"
              + (f" -> score >= {threshold:.3f}" if args.alarm_rate is not None else ""))
    elif calibration is None:
        print("note: no calibration: scores are min-max normalised per video (or window), so the "
              "worst frame scores 1 whatever happens; run python -m zxvad.calibrate for an "
              "absolute scale")  # stdout: stderr holds only errors, one line each
    failed, names, labelled = 0, set(), []
    for number, item in enumerate(args.inputs):
        try:
            with VideoSource(item, cfg.model.image_size,
                             display_width=OVERLAY_MAX_WIDTH if args.overlay else None,
                             max_frames=args.max_frames, fps=args.fps) as source:
                name = source.name
                while name in names:  # two inputs with one stem: keep both
                    name += "_"
                names.add(name)
                # a live stream without a calibration is normalised over a sliding window
                window = args.window or (LIVE_WINDOW if source.live and calibration is None else None)
                det = detect_video(G, source, T=cfg.model.T, device=device, out_dir=args.out,
                                   batch_size=args.batch_size or cfg.eval.batch_size, window=window,
                                   threshold=threshold, overlay=args.overlay, name=name,
                                   progress=not args.no_progress,
                                   calibration=calibration if args.window is None else None)
        except (VideoError, OSError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{det.name}: {det.num_frames} frames ({len(det.psnr)} scored), "
              f"{det.frames_per_second:.1f} frame/s on {device.type}, peak RSS {peak_rss_mb():.0f} MB"
              + (" (stopped by the user)" if det.stopped else ""))
        if det.threshold is not None:
            ranges = ", ".join(str(s) for s in det.segments) or "none"
            print(f"{det.name}: anomalous segments (score >= {det.threshold:g}): {ranges}")
        print(f"{det.name}: wrote {', '.join(str(f) for f in det.files)}")
        if labels[number] is not None:
            try:
                truncated = det.stopped or args.max_frames is not None
                labelled.append(labelled_video(det, labels[number], args.labels[number], truncated))
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                failed += 1
    if labelled:
        print(label_table(labelled, cfg.model.T))
        if calibration is not None and args.window is None and threshold is not None:
            asked = (f"alarm rate {args.alarm_rate:g}" if args.alarm_rate is not None
                     else f"calibrated threshold {threshold:g}")
            reports = alarm_reports(labelled, cfg.model.T, calibration, threshold, args.alarm_rate)
            print(calibration_lib.alarm_table(reports, asked))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
