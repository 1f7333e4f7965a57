"""Score any new camera's video with a trained G, out of the box (zero-shot: no adaptation).

``python -m zxvad.detect VIDEO_OR_FRAME_DIR [...] --checkpoint PATH|MLFLOW_URI [--out DIR]``

Frames are streamed (PyAV for anything FFmpeg reads, including rtsp:// and http:// URLs, or a
folder of images), resized to the checkpoint's square size and kept in a ring of T+1 frames;
G predicts frame T+1 of each window in batches (on the GPU when present) and each prediction's
PSNR is its raw score. As in evaluation (Liu et al. 2018), the first T frames are not scored
and the anomaly score is 1 - min-max normalised PSNR: over the whole video for files, or over
the last ``--window`` frames for live streams, so a stream's scores come out as it plays. Only
a few floats per frame are kept, never frames, so memory stays flat however long the video.

Outputs per input, in ``--out``: ``NAME.csv`` and ``NAME.json`` (frame, time in s, raw PSNR,
score, and anomalous 0/1 with ``--threshold``), ``NAME-curve.png`` and, with ``--overlay``,
``NAME-overlay.mp4`` (G's difference heat map blended over the frames). With ``--threshold``
the anomalous frames are merged into segments and printed as time ranges (00:01.20-00:03.40).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zxvad import scoring
from zxvad.checkpoint import load_generator as load_detector
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
    frames: int  # frames decoded (scored ones are frames - T)
    first_scored: int  # T
    time: np.ndarray
    psnr: np.ndarray
    score: np.ndarray
    normalisation: str  # "video" or "window:N"
    threshold: float | None = None
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the pass (decode + G)
    files: list[Path] = field(default_factory=list)
    stopped: bool = False  # the user interrupted the stream

    @property
    def frame_index(self) -> np.ndarray:
        return np.arange(self.first_scored, self.first_scored + len(self.psnr))

    @property
    def anomalous(self) -> np.ndarray | None:
        return None if self.threshold is None else (self.score >= self.threshold).astype(np.int64)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


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
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.file = open(self.tmp, "w")
        self.file.write("frame,time_s,psnr,score" + (",anomalous\n" if with_flag else "\n"))

    def write(self, index: int, t: float, psnr: float, score: float, flag: int | None) -> None:
        tail = "" if flag is None else f",{flag}"
        self.file.write(f"{index},{t:.4f},{psnr:.4f},{score:.6f}{tail}\n")

    def finish(self) -> Path:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


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


@torch.no_grad()
def detect_video(G: torch.nn.Module, source: VideoSource, *, frames: int, device: torch.device,
                 out_dir: str | Path, batch_size: int = 16, window: int | None = None,
                 threshold: float | None = None, overlay: bool = False, name: str | None = None,
                 progress: bool = True) -> Detection:
    """Score every frame after the first T of one input and write its outputs.

    Args:
        G: the generator in eval mode, on ``device``.
        source: the open input (its frames come at G's size).
        frames: T.
        out_dir: where ``NAME.csv``, ``NAME.json``, ``NAME-curve.png`` (and the overlay) go.
        batch_size: windows per forward pass.
        window: normalise over the last ``window`` frames (live streams); None: the whole video.
        threshold: mark frames with score >= threshold and merge them into segments.
        overlay: also write ``NAME-overlay.mp4`` with the difference heat map.
        name: the output stem (default: the input's name).

    Returns:
        The :class:`Detection`, with the written files.

    Raises:
        VideoError: the input cannot be decoded or has fewer than T+1 frames.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or source.name
    windowed = window is not None
    csv = _CsvRows(out / f"{name}.csv", threshold is not None)
    normaliser = SlidingNormaliser(window) if windowed else None
    tracker = SegmentTracker(1.0 / source.fps)
    colors = _heat_colors() if overlay else None
    writer: VideoWriter | None = None
    times, psnrs, scores = array("d"), array("d"), array("d")
    ring: deque[torch.Tensor] = deque(maxlen=frames + 1)
    pending: list[tuple] = []  # (index, time, display, window (T+1, 3, S, S))
    bar = tqdm(total=source.total, desc=name, unit="frame", disable=not progress, dynamic_ncols=True)

    def flush() -> None:
        if not pending:
            return
        windows = torch.stack([w for *_, w in pending]).to(device, non_blocking=True)
        target = windows[:, frames]
        prediction = G(windows[:, :frames]).prediction
        values = scoring.psnr(prediction, target).cpu().tolist()
        if overlay:
            prediction, target = prediction.float().cpu(), target.float().cpu()
        for j, ((index, t, display, _), p) in enumerate(zip(pending, values)):
            times.append(t)
            psnrs.append(p)
            if windowed:
                score = normaliser.push(p)
                scores.append(score)
                flag = None if threshold is None else int(score >= threshold)
                csv.write(index, t, p, score, flag)
                if flag is not None and (closed := tracker.push(index, t, bool(flag))):
                    bar.write(f"{name}: anomalous {closed} (frames {closed.first}-{closed.last})")
            if overlay:
                writer.write(blend_heat(display, prediction[j], target[j], colors))
        pending.clear()

    start = time.perf_counter()
    decoded, stopped = 0, False
    files: list[Path] = []
    try:
        try:
            for frame in source:
                decoded += 1
                bar.update(1)
                if overlay and writer is None:
                    h, w = frame.display.shape[:2]
                    writer = VideoWriter(out / f"{name}-overlay.mp4", w, h, source.fps)
                ring.append(_to_tensor(frame.model))
                if frame.index < frames:  # no T predecessors yet: shown, not scored
                    if overlay:
                        writer.write(frame.display)
                    continue
                pending.append((frame.index, frame.time, frame.display, torch.stack(tuple(ring))))
                if len(pending) == batch_size:
                    flush()
        except KeyboardInterrupt:  # a live stream ends when its user says so: keep what was scored
            stopped = True
        flush()
        bar.close()
        seconds = time.perf_counter() - start
        if decoded < frames + 1:
            raise VideoError(f"input '{source.source}': {decoded} frame(s), needs at least "
                             f"T+1 = {frames + 1} (G predicts frame T+1 from T frames)")
        psnr = np.frombuffer(psnrs, dtype=np.float64).copy()
        if windowed:
            score = np.frombuffer(scores, dtype=np.float64).copy()
        else:
            score = scoring.normalize_scores(psnr)
            for index, t, p, s in zip(range(frames, frames + len(psnr)), times, psnr, score):
                flag = None if threshold is None else int(s >= threshold)
                csv.write(index, t, p, s, flag)
                if flag is not None:
                    tracker.push(index, t, bool(flag))
        if threshold is not None and (closed := tracker.close()) and windowed:
            bar.write(f"{name}: anomalous {closed} (frames {closed.first}-{closed.last})")
        det = Detection(name=name, source=source.source, fps=source.fps, frames=decoded,
                        first_scored=frames, time=np.frombuffer(times, dtype=np.float64).copy(),
                        psnr=psnr, score=score, threshold=threshold, segments=tracker.segments,
                        normalisation=f"window:{window}" if windowed else "video", seconds=seconds,
                        stopped=stopped)
        files.append(_write_json(det, out / f"{name}.json"))
        files.append(plot_curve(det, out / f"{name}-curve.png"))
        if writer is not None:
            files.append(writer.finish())
            writer = None
        files.append(csv.finish())
    except BaseException:
        bar.close()
        csv.abort()
        if writer is not None:
            writer.abort()
        for path in files:  # this input's outputs are all or nothing
            path.unlink(missing_ok=True)
        raise
    det.files = files
    return det


def _write_json(det: Detection, path: Path) -> Path:
    report = {
        "source": det.source, "fps": det.fps, "decoded_frames": det.frames,
        "first_scored_frame": det.first_scored, "normalisation": det.normalisation,
        "threshold": det.threshold, "stopped_by_user": det.stopped,
        "segments": [s.as_dict() for s in det.segments],
        "frames": {"index": det.frame_index.tolist(), "time_s": det.time.tolist(),
                   "psnr": det.psnr.tolist(), "score": det.score.tolist()},
    }
    if det.anomalous is not None:
        report["frames"]["anomalous"] = det.anomalous.tolist()
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, path)
    return path


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
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("anomaly score")
    norm = "whole video" if det.normalisation == "video" else f"last {det.normalisation[7:]} frames"
    top.set_title(f"{det.name}: 1 - normalised PSNR (over the {norm})", fontsize=10)
    bottom.plot(det.time, det.psnr, color="tab:gray", lw=0.8)
    bottom.set_ylabel("PSNR (dB)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
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
                        help="normalise scores over the last N frames (live streams; default for "
                             f"rtsp/rtmp/udp URLs: {LIVE_WINDOW}); otherwise over the whole video")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="mark frames with score >= T and print anomalous segments as time ranges")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--window", args.window, 2),
                             ("--max-frames", args.max_frames, 1), ("--size", args.size, 1),
                             ("--threads", args.threads, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} {value}: must be at least {low}")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps {args.fps}: must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        G, cfg = load_detector(args.checkpoint, device, args.size)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed, names = 0, set()
    for item in args.inputs:
        try:
            with VideoSource(item, cfg.model.image_size,
                             display_width=OVERLAY_MAX_WIDTH if args.overlay else None,
                             max_frames=args.max_frames, fps=args.fps) as source:
                name = source.name
                while name in names:  # two inputs with one stem: keep both
                    name += "_"
                names.add(name)
                window = args.window or (LIVE_WINDOW if source.live else None)
                det = detect_video(G, source, frames=cfg.model.frames, device=device, out_dir=args.out,
                                   batch_size=args.batch_size or cfg.eval.batch_size, window=window,
                                   threshold=args.threshold, overlay=args.overlay, name=name,
                                   progress=not args.no_progress)
        except (VideoError, OSError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{det.name}: {det.frames} frames ({len(det.psnr)} scored), "
              f"{det.frames_per_second:.1f} frame/s on {device.type}, peak RSS {peak_rss_mb():.0f} MB"
              + (" (stopped by the user)" if det.stopped else ""))
        if det.threshold is not None:
            ranges = ", ".join(str(s) for s in det.segments) or "none"
            print(f"{det.name}: anomalous segments (score >= {det.threshold:g}): {ranges}")
        print(f"{det.name}: wrote {', '.join(str(f) for f in det.files)}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
