"""Calibrate a trained G on a camera's normal footage, without training.

``python -m zxvad.calibrate --checkpoint CKPT NORMAL_VIDEO_OR_FRAME_DIR [...] [--out FILE]``

G (a checkpoint folder, an MLflow model URI or a TorchScript/ONNX export) predicts every frame of
the given normal footage from its T predecessors, exactly as ``zxvad.detect`` will; the PSNRs of
G and of the trivial copy_last predictor on those frames become the calibrated score scale of
:mod:`zxvad.calibration` (score 0 = a typical normal frame, 1 = as bad as the worst 1 %). The
statistics are written to ``calibration.json`` beside the checkpoint's ``state.pt`` (or
``FILE.calibration.json`` beside an export; ``--out`` for anywhere else, required for an MLflow
URI), where ``zxvad.detect``, ``zxvad.export`` and the MLflow model find them. It prints the
thresholds of a few alarm rates. Some minutes of footage are enough: an alarm rate a needs at
least 1/a normal frames.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

import numpy as np
import torch

from zxvad import calibration as cal

SHOWN_RATES = (0.001, 0.005, 0.01, 0.05)


@torch.no_grad()
def source_psnrs(G, source, *, T: int, device: torch.device, batch_size: int = 16
                 ) -> dict[str, np.ndarray]:
    """PSNR of G's and of copy_last's prediction of every frame after the first T of one input."""
    from zxvad.detect import _to_tensor
    from zxvad.calibration import score_windows

    ring: deque = deque(maxlen=T + 1)
    pending, values = [], {"G": [], "copy_last": []}

    def flush():
        if pending:
            scored = score_windows(G, torch.stack(pending).to(device), T)
            values["G"].append(scored["psnr"])
            values["copy_last"].append(scored["copy_last_psnr"])
            pending.clear()

    for frame in source:
        ring.append(_to_tensor(frame.model))
        if len(ring) == T + 1:
            pending.append(torch.stack(tuple(ring)))
            if len(pending) == batch_size:
                flush()
    flush()
    return {p: np.concatenate(v) if v else np.zeros(0) for p, v in values.items()}


def calibrate(G, cfg, inputs: list[str], *, device: torch.device, batch_size: int = 16,
              fps: float | None = None, max_frames: int | None = None, checkpoint: str = "",
              progress: bool = True) -> cal.Calibration:
    """The :class:`zxvad.calibration.Calibration` of G (and copy_last) on ``inputs``.

    Raises:
        zxvad.video_io.VideoError: an input that cannot be read.
        zxvad.calibration.CalibrationError: too few scored frames.
    """
    from tqdm import tqdm

    from zxvad.video_io import VideoSource

    T, size = cfg.model.T, cfg.model.image_size
    pooled: dict[str, list[np.ndarray]] = {p: [] for p in cal.PREDICTORS}
    for item in tqdm(inputs, desc="calibrate", unit="input", disable=not progress):
        with VideoSource(item, size, max_frames=max_frames, fps=fps) as source:
            for p, v in source_psnrs(G, source, T=T, device=device, batch_size=batch_size).items():
                pooled[p].append(v)
    scales = {p: cal.ScoreScale.fit(np.concatenate(v)) for p, v in pooled.items()}
    return cal.Calibration(scales, T, size, sources=[str(i) for i in inputs], checkpoint=checkpoint)


def summary(calibration: cal.Calibration) -> str:
    g = calibration.scale("G")
    lines = [f"calibrated on {g.frames} normal frames of {len(calibration.sources)} input(s): "
             f"G's median PSNR {g.median:.2f} dB, 1 % line {g.quantiles[cal.REFERENCE_RATE]:.2f} dB "
             f"(score 1); copy_last's median {calibration.scale('copy_last').median:.2f} dB"]
    rates = [r for r in SHOWN_RATES if min(g.quantiles) <= r <= max(g.quantiles)]
    lines.append("alarm rate -> threshold on the calibrated score: "
                 + ", ".join(f"{r:g} -> {g.threshold(r):.3f}" for r in rates))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zxvad.calibrate",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("inputs", nargs="+", metavar="NORMAL_VIDEO_OR_FRAME_DIR",
                        help="the camera's normal footage: video files or frame folders")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder (or its state.pt), MLflow model URI, or an export "
                             "(.pt TorchScript / .onnx) written by zxvad.export")
    parser.add_argument("--out", default=None,
                        help=f"calibration file (default: {cal.CALIBRATION_FILE} beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass (default: the checkpoint's eval.batch_size)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of frame folders")
    parser.add_argument("--max-frames", type=int, default=None, help="stop each input after N frames")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--max-frames", args.max_frames)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    out = Path(args.out) if args.out else cal.beside_checkpoint(args.checkpoint)
    if out is None:
        parser.error(f"--checkpoint {args.checkpoint} is an MLflow URI: give --out FILE")
    try:
        from zxvad.serving import load_predictor
        from zxvad.video_io import VideoError

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        G, cfg = load_predictor(args.checkpoint, device)
        result = calibrate(G, cfg, args.inputs, device=device,
                           batch_size=args.batch_size or cfg.eval.batch_size, fps=args.fps,
                           max_frames=args.max_frames, checkpoint=str(args.checkpoint),
                           progress=not args.no_progress)
        result.save(out)
    except (ValueError, RuntimeError, OSError) as err:  # VideoError, CalibrationError, CheckpointError
        lines = str(err).strip().splitlines() or [type(err).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2
    print(summary(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
