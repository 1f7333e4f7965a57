"""Checkpoints: one folder per save with the whole training state and the config that made it.

Layout of a checkpoint folder (what ``ray.train.report`` uploads to ``storage_path``)::

    state.pt      TrainState.state_dict() (G, D, N, ArcFace, optimizers, scaler, step, R's seed)
    config.yaml   the run's config, so a checkpoint rebuilds its own models
    meta.json     step, R's backbone and seed, and zxvad's checkpoint version

``load_generator`` also accepts the ``state.pt`` file itself or an MLflow model URI
(``runs:/<id>/generator``, ``models:/name/1``) logged by training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zxvad import config as config_lib

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the path."""


def save(state: Any, directory: str | Path) -> Path:
    """Write ``state`` (a :class:`zxvad.step.TrainState`) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state.state_dict(), directory / STATE_FILE)
    from zxvad.redaction import redacted_config  # the file outlives the run: no secret goes in it

    (directory / CONFIG_FILE).write_text(redacted_config(state.cfg).to_yaml())
    meta = {"version": VERSION, "step": int(state.step), "backbone": state.cfg.model.backbone,
            "backbone_seed": state.cfg.model.backbone_seed}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def _state_path(path: Path) -> Path:
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}': not found (expected a folder with {STATE_FILE})")
    return path


def read(path: str | Path) -> tuple[dict, config_lib.Config]:
    """The state dict and config of a checkpoint folder (or its ``state.pt``)."""
    state_path = _state_path(Path(path))
    config_path = state_path.parent / CONFIG_FILE
    if not config_path.exists():
        raise CheckpointError(f"checkpoint '{state_path.parent}': {CONFIG_FILE} is missing")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a corrupt file
        raise CheckpointError(f"checkpoint '{state_path}': cannot be read ({err})") from None
    return state, config_lib.from_yaml_text(config_path.read_text())


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   size: int | None = None) -> tuple[torch.nn.Module, config_lib.Config]:
    """G in eval mode on ``device`` and its config, from a checkpoint or an MLflow model URI.

    Raises:
        CheckpointError: a missing or unreadable checkpoint, weights that do not match its
            config, or a checkpoint of another image size than ``size``.
    """
    text = str(path)
    if text.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        G, cfg = _load_mlflow_generator(text, device)
    else:
        G, cfg = _load_checkpoint_generator(path)
    if size is not None and size != cfg.model.image_size:
        s = cfg.model.image_size
        raise CheckpointError(f"checkpoint '{path}': G was trained on {s}x{s} frames, not the "
                              f"requested --size {size} (drop --size to score at {s}x{s})")
    return G.to(device).eval(), cfg


def _load_checkpoint_generator(path: str | Path) -> tuple[torch.nn.Module, config_lib.Config]:
    from zxvad.models import build_generator

    state, cfg = read(path)
    if "G" not in state:
        raise CheckpointError(f"checkpoint '{path}': holds no generator weights (key 'G')")
    G = build_generator(cfg.model)
    try:
        G.load_state_dict(state["G"])
    except RuntimeError as err:  # the weights are not those of the config's G
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(f"checkpoint '{path}': its weights do not match its config.yaml "
                              f"({detail})") from None
    return G, cfg


def _load_mlflow_generator(uri: str, device) -> tuple[torch.nn.Module, config_lib.Config]:
    from zxvad.tracking.read import load_generator_model
    from zxvad.tracking.store import TrackingError

    try:
        G, config_text = load_generator_model(uri, device, CONFIG_FILE)
    except TrackingError as err:
        raise CheckpointError(str(err)) from None
    return G, config_lib.from_yaml_text(config_text)
