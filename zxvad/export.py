"""Export G for serving, as TorchScript or ONNX, and check it against PyTorch.

``python -m zxvad.export --checkpoint PATH|MLFLOW_URI --format torchscript|onnx [--out FILE]``

The exported model is G's prediction only: input ``frames`` (B, T, 3, S, S) float32 in [-1, 1]
(T frames, RGB, S the checkpoint's image size; any batch size), output ``prediction``
(B, 3, S, S) in [-1, 1], the predicted frame T+1. A server scores a frame with PSNR of the
prediction against the real frame, on [0, 1] images (see ``zxvad.scoring``). Beside the model,
``FILE.json`` records T, S, the value range and the config. After writing, the export is loaded
back (TorchScript by torch.jit.load, ONNX by onnxruntime) and its outputs on random windows are
compared with PyTorch's; a difference above ``--atol`` is an error and removes the files.
A calibration stored with the checkpoint (``python -m zxvad.calibrate``) is copied to
``FILE.calibration.json``, where ``zxvad.detect --checkpoint FILE`` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from shards.storage import atomic_path, atomic_write
from zxvad import calibration

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 18
DEFAULT_ATOL = 1e-4  # tanh outputs in [-1, 1]: float32 kernels differ by ~1e-7


class Predictor(nn.Module):
    """G for serving: T frames (B, T, 3, S, S) in [-1, 1] -> the prediction (B, 3, S, S)."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, frames: Tensor) -> Tensor:
        return self.G(frames).prediction


def example_frames(cfg, batch: int = 2, seed: int = 0) -> Tensor:
    """Random windows in [-1, 1] of the checkpoint's shape (batch >= 2 keeps the batch dynamic)."""
    m = cfg.model
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, m.T, 3, m.image_size, m.image_size, generator=generator) * 2 - 1


def export_torchscript(G: nn.Module, cfg, path: str | Path) -> Path:
    """Trace G's prediction into a TorchScript file; the batch size stays free."""
    model = Predictor(G).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # G's shape checks read static sizes only; the traced graph is right for any batch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        traced = torch.jit.trace(model, example_frames(cfg))
    traced.save(str(path))
    return Path(path)


def export_onnx(G: nn.Module, cfg, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export G's prediction to ONNX (torch.export based), with a dynamic batch axis."""
    model = Predictor(G).eval()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example_frames(cfg),), input_names=["frames"],
                                    output_names=["prediction"], opset_version=opset,
                                    dynamic_shapes={"frames": {0: batch}}, dynamo=True,
                                    verbose=False)
    program.save(str(path))
    return Path(path)


def load_exported(path: str | Path, fmt: str):
    """A callable ``frames (Tensor) -> prediction (Tensor)`` running the exported file."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is deprecated.*")
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda frames: module(frames)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda frames: torch.from_numpy(session.run(None, {"frames": frames.numpy()})[0])


@torch.no_grad()
def max_difference(path: str | Path, fmt: str, G: nn.Module, cfg, batches=(1, 3)) -> float:
    """Largest |exported - PyTorch| over random windows at each batch size, on the CPU."""
    run = load_exported(path, fmt)
    reference = Predictor(G).eval()
    worst = 0.0
    for i, batch in enumerate(batches):
        frames = example_frames(cfg, batch, seed=1 + i)
        worst = max(worst, (run(frames) - reference(frames)).abs().max().item())
    return worst


def export(G: nn.Module, cfg, fmt: str, path: str | Path, atol: float = DEFAULT_ATOL,
           source: str = "") -> tuple[Path, float]:
    """Write G in ``fmt`` to ``path`` (plus ``path.json``), verify it, return (path, max |diff|).

    Raises:
        ValueError: an unknown format, or an export whose outputs differ from PyTorch's by more
            than ``atol`` (its files are removed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    G = G.cpu().eval()
    with atomic_path(path) as tmp:
        (export_torchscript if fmt == "torchscript" else export_onnx)(G, cfg, tmp)
        diff = max_difference(tmp, fmt, G, cfg)
        if not diff <= atol:
            raise ValueError(f"export '{path}': outputs differ from PyTorch's by {diff:.3g} "
                             f"(more than --atol {atol:g})")
        m = cfg.model
        card = {"format": fmt, "checkpoint": source, "input": "frames", "output": "prediction",
                "input_shape": ["batch", m.T, 3, m.image_size, m.image_size],
                "output_shape": ["batch", 3, m.image_size, m.image_size], "range": [-1.0, 1.0],
                "color": "RGB", "T": m.T, "image_size": m.image_size,
                "max_abs_difference_vs_pytorch": diff, "config": cfg.to_dict()}
        atomic_write(path.with_name(path.name + ".json"), json.dumps(card, indent=2))
    return path, diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zxvad.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder (or its state.pt) or an MLflow model URI (runs:/...)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="export format")
    parser.add_argument("--out", default=None,
                        help="output file (default: export-out/generator-SIZE.pt or .onnx)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest allowed |exported - PyTorch| (default {DEFAULT_ATOL:g})")
    args = parser.parse_args(argv)
    try:
        from zxvad.checkpoint import load_generator

        G, cfg = load_generator(args.checkpoint, torch.device("cpu"))
        out = args.out or f"export-out/generator-{cfg.model.image_size}{FORMATS[args.format]}"
        path, diff = export(G, cfg, args.format, out, args.atol, source=str(args.checkpoint))
        found = calibration.find(args.checkpoint)  # the camera's scale travels with the model
        if found is not None:
            found.save(calibration.beside_checkpoint(path))
    except (ValueError, RuntimeError, OSError, ImportError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.format}, {path.stat().st_size / 1e6:.2f} MB) and {path}.json; "
          f"max |exported - PyTorch| = {diff:.2e} on batches of 1 and 3")
    if found is not None:
        print(f"wrote {calibration.beside_checkpoint(path)} (the checkpoint's calibration)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
