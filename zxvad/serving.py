"""G wherever it was saved, behind one call: a checkpoint, an MLflow model, or an export.

:func:`load_predictor` gives a module whose ``forward(frames)`` returns an object with a
``prediction`` field, as G does, and the config it was trained with, from:

- a checkpoint folder or its ``state.pt``, or an MLflow model URI (``runs:/``, ``models:/``),
  through :func:`zxvad.checkpoint.load_generator`;
- a TorchScript (``.pt``) or ONNX (``.onnx``) file written by ``python -m zxvad.export``, read with
  the ``FILE.json`` card beside it (T, image size, config), so no zxvad model code is needed to run
  G, only torch (and onnxruntime for ONNX).

:func:`log_model` logs G as an MLflow pyfunc model that serves per-frame PSNR and calibrated
scores (:class:`FrameScorer`); ``python -m zxvad.serving`` logs a checkpoint that way and
registers it under an alias.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

# the code logged with the model: this package and shards beside it, found from this file (a
# process whose working folder holds a data folder named "shards" imports that folder as a
# namespace package, without __file__, when the project is an editable install)
PACKAGE_DIR = Path(__file__).resolve().parent

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


# ----------------------------------------------------------------------------- the MLflow model

MODEL_NAME = "generator"  # runs:/<run_id>/generator, as training logs it


def _requirements() -> list[str]:
    """Pinned to this environment's versions, so a fresh environment rebuilds the same one."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "torchvision", "numpy", "pandas", "pyyaml"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def write_serving_checkpoint(G: torch.nn.Module, cfg, folder: str | Path, calibration=None) -> Path:
    """G alone (no D, N or optimizers) as a checkpoint folder ``load_generator`` reads; the
    config as the checkpoint stores it (no secret in it)."""
    from zxvad.checkpoint import CONFIG_FILE, STATE_FILE
    from zxvad.ddp import unwrap
    from zxvad.names import CHECKPOINT_ARTIFACT
    from zxvad.redaction import redacted_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(G).state_dict().items()}
    torch.save({"G": state}, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(redacted_config(cfg).to_yaml())
    if calibration is not None:
        from zxvad.calibration import CALIBRATION_FILE

        calibration.save(folder / CALIBRATION_FILE)
    return folder


def log_model(G: torch.nn.Module, cfg, *, name: str = MODEL_NAME, calibration=None,
              registered_model_name: str | None = None, alias: str | None = None):
    """Log G into the active MLflow run as a pyfunc model that serves frame scores.

    The model holds G's weights and config (and the camera's calibration, when given) as an
    artifact, zxvad's own code (``code_paths``: the packages zxvad and shards, so a fresh
    environment needs no zxvad install) and pinned requirements. ``predict`` takes a clip
    (N, S, S, 3) uint8 RGB and returns one row per frame after the first T (see
    :class:`FrameScorer`). Registered as ``registered_model_name`` with ``alias`` (e.g.
    ``champion``: ``models:/NAME@champion``) when given.

    Returns:
        MLflow's ``ModelInfo`` (``registered_model_version`` set when registered).
    """
    import tempfile

    import mlflow
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    m = cfg.model
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, m.image_size, m.image_size, 3))]),
        outputs=Schema([ColSpec("long", "frame"), ColSpec("double", "psnr"),
                        ColSpec("double", "copy_last_psnr"), ColSpec("double", "score")]))
    example = np.zeros((m.T + 2, m.image_size, m.image_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        from zxvad.names import CHECKPOINT_ARTIFACT

        folder = write_serving_checkpoint(G, cfg, Path(tmp) / CHECKPOINT_ARTIFACT, calibration)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=FrameScorer(), artifacts={CHECKPOINT_ARTIFACT: str(folder)},
            code_paths=[str(PACKAGE_DIR), str(PACKAGE_DIR.parent / "shards")],
            pip_requirements=_requirements(), signature=signature, input_example=example,
            registered_model_name=registered_model_name)
    version = getattr(info, "registered_model_version", None)
    if registered_model_name and alias and version is not None:
        mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, str(version))
    return info


try:  # the pyfunc base class; without mlflow, FrameScorer is a plain class (never served)
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object


with warnings.catch_warnings():  # MLflow asks for type hints; the signature is given at logging
    warnings.filterwarnings("ignore", message=".*type hints.*")

    class FrameScorer(_PythonModel):
        """MLflow pyfunc: a clip of frames in, per-frame PSNR and calibrated score out.

        Input: (N, S, S, 3) uint8 RGB, N >= T+1 consecutive frames of one camera at G's size S
        (``{"inputs": [...]}`` over HTTP). Output: one row per frame T..N-1: ``frame`` (its index in
        the clip), ``psnr`` (dB, G's prediction against the frame), ``copy_last_psnr`` (the trivial
        predictor's), ``score`` (the calibrated score, NaN when the model holds no calibration).
        """

        def load_context(self, context):
            from zxvad import calibration as calibration_lib
            from zxvad.checkpoint import load_generator

            from zxvad.names import CHECKPOINT_ARTIFACT

            folder = context.artifacts[CHECKPOINT_ARTIFACT]
            self.G, self.cfg = load_generator(folder, "cpu")
            self.calibration = calibration_lib.find(folder)

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from zxvad.calibration import score_windows

            frames = self._frames(model_input)
            T = self.cfg.model.T
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            windows = x.unfold(0, T + 1, 1).permute(0, 4, 1, 2, 3)  # (N - T, T+1, 3, S, S)
            scored = score_windows(self.G, windows.contiguous(), T, self.calibration)
            score = scored.get("score", np.full(len(scored["psnr"]), np.nan))
            return pd.DataFrame({"frame": np.arange(T, len(frames)), "psnr": scored["psnr"],
                                 "copy_last_psnr": scored["copy_last_psnr"], "score": score})

        def _frames(self, model_input) -> np.ndarray:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            m = self.cfg.model
            frames = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
            want = f"(N, {m.image_size}, {m.image_size}, 3) uint8 RGB frames with N >= T+1 = {m.T + 1}"
            if frames.ndim != 4 or frames.shape[1:] != (m.image_size, m.image_size, 3):
                raise MlflowException(f"frames of shape {frames.shape}: expected {want}",
                                      error_code=INVALID_PARAMETER_VALUE)
            if len(frames) < m.T + 1:
                raise MlflowException(f"{len(frames)} frame(s): expected {want} (G predicts frame T+1 "
                                      "from the T before it)", error_code=INVALID_PARAMETER_VALUE)
            return frames.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """``python -m zxvad.serving --checkpoint CKPT [--register NAME] [--alias champion]``"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m zxvad.serving",
        description="Log a checkpoint (with its calibration) to MLflow as a model that serves "
                    "per-frame PSNR and calibrated scores; register it under an alias.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (or its state.pt)")
    parser.add_argument("--experiment", default="zxvad-serving", help="MLflow experiment")
    parser.add_argument("--register", default=None, metavar="NAME", help="registered model name")
    parser.add_argument("--alias", default=None, help="alias of the new version, e.g. champion")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    if args.alias and not args.register:
        parser.error("--alias needs --register NAME")
    try:
        import mlflow

        from zxvad import calibration as calibration_lib
        from zxvad.checkpoint import load_generator
        from zxvad.tracking.store import experiment_id, resolve_uri

        G, cfg = load_generator(args.checkpoint)
        found = calibration_lib.find(args.checkpoint)
        uri = resolve_uri(args.tracking_uri)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=experiment_id(uri, args.experiment)) as run:
            info = log_model(G, cfg, calibration=found, registered_model_name=args.register,
                             alias=args.alias)
    except (ValueError, RuntimeError, OSError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2
    print(f"logged {info.model_uri} in run {run.info.run_id} "
          f"({'calibrated' if found else 'no calibration: score is NaN'})")
    if args.register:
        where = f"models:/{args.register}@{args.alias}" if args.alias else \
            f"models:/{args.register}/{info.registered_model_version}"
        print(f"registered {where}; serve it with: mlflow models serve -m '{where}' --env-manager local")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
