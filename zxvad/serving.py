"""G wherever it was saved, behind one call: a checkpoint, an MLflow model, or an export.

:func:`load_predictor` gives a module whose ``forward(frames)`` returns an object with a
``prediction`` field, as G does, and the config it was trained with, from:

- a checkpoint folder or its ``state.pt``, or an MLflow model URI (``runs:/``, ``models:/``),
  through :func:`zxvad.checkpoint.load_generator`;
- a TorchScript (``.pt``) or ONNX (``.onnx``) file written by ``python -m zxvad.export``, read with
  the ``FILE.json`` card beside it (T, image size, config), so no zxvad model code is needed to run
  G, only torch (and onnxruntime for ONNX).

:func:`score_windows` turns windows of frames into per-frame PSNR and calibrated scores: the one
scoring path that ``zxvad.detect``, ``zxvad.calibrate`` and the MLflow pyfunc model share.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

EXPORT_SUFFIXES = {".onnx": "onnx"}  # .pt is TorchScript when a card says so (a state.pt is not)


def export_format(path: str | Path) -> str | None:
    """'torchscript' or 'onnx' for a file ``zxvad.export`` wrote (it has a ``FILE.json`` card)."""
    path = Path(str(path))
    if "://" in str(path) or path.is_dir() or not path.with_name(path.name + ".json").exists():
        return None
    try:
        fmt = json.loads(path.with_name(path.name + ".json").read_text()).get("format")
    except (OSError, ValueError):
        return None
    return fmt if fmt in ("torchscript", "onnx") else None


class ExportedG(torch.nn.Module):
    """An exported G (TorchScript or ONNX) called like G: ``forward(frames).prediction``."""

    def __init__(self, path: str | Path, fmt: str):
        super().__init__()
        from zxvad.export import load_exported

        self.path, self.format = str(path), fmt
        self._run = load_exported(path, fmt)

    def forward(self, frames: torch.Tensor):
        device = frames.device
        prediction = self._run(frames.detach().float().cpu().contiguous())
        return SimpleNamespace(prediction=prediction.to(device))


def load_predictor(path: str | Path, device: str | torch.device = "cpu", size: int | None = None):
    """``(G, cfg)`` from a checkpoint, an MLflow model URI or a TorchScript/ONNX export.

    Raises:
        zxvad.checkpoint.CheckpointError: a missing or unreadable model, or another image size
            than ``size``.
    """
    from zxvad import config as config_lib
    from zxvad.checkpoint import CheckpointError, load_generator

    fmt = export_format(path)
    if fmt is None:
        return load_generator(path, device, size)
    card_path = Path(str(path) + ".json")
    try:
        card = json.loads(card_path.read_text())
        cfg = config_lib.from_dict(card["config"])
        G = ExportedG(path, fmt)
    except Exception as err:  # a bad card, a corrupt file, onnxruntime missing
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise CheckpointError(f"export '{path}': cannot be loaded ({lines[0]})") from None
    if size is not None and size != cfg.model.image_size:
        s = cfg.model.image_size
        raise CheckpointError(f"export '{path}': G was exported for {s}x{s} frames, not the "
                              f"requested --size {size} (drop --size to score at {s}x{s})")
    return G, cfg


@torch.no_grad()
def score_windows(G, windows: torch.Tensor, T: int, calibration=None) -> dict[str, np.ndarray]:
    """Per window: PSNR (dB) of G's prediction of the last frame and of copy_last's, and with a
    calibration, G's calibrated score.

    Args:
        G: called as ``G(frames).prediction``.
        windows: (B, T+1, 3, S, S) in [-1, 1].
        calibration: a :class:`zxvad.calibration.Calibration`, or None.
    """
    from zxvad import scoring

    inputs, target = windows[:, :T], windows[:, T]
    out = {"psnr": scoring.psnr(G(inputs).prediction, target).cpu().numpy().astype(np.float64),
           "copy_last_psnr": scoring.psnr(inputs[:, -1], target).cpu().numpy().astype(np.float64)}
    if calibration is not None:
        out["score"] = calibration.scale("G").score(out["psnr"])
    return out
