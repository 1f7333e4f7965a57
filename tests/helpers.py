"""Helpers the test modules share: tiny configs and checkpoints, free ports, pattern shards."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch

from zxvad import checkpoint, config
from zxvad.models import build_generator

# The smallest model every test that builds G, D or N starts from (later overrides win).
TINY_MODEL = ["model.image_size=32", "model.width=4", "model.memory_dim=32", "model.memory_items=8"]


def tiny_config(*overrides: str, base: str = "demo") -> config.Config:
    return config.load(base, [*TINY_MODEL, *overrides])


def tiny_generator(cfg: config.Config | None = None, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised G of ``cfg`` (the tiny one by default), the same for each seed."""
    torch.manual_seed(seed)
    return build_generator((cfg or tiny_config()).model)


def write_checkpoint(folder: Path, G: torch.nn.Module | None = None, cfg: config.Config | None = None) -> Path:
    """A checkpoint folder as training writes it, as far as loading G needs: G's weights and the config."""
    cfg = cfg or tiny_config()
    G = G if G is not None else tiny_generator(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"G": G.state_dict()}, folder / checkpoint.STATE_FILE)
    (folder / checkpoint.CONFIG_FILE).write_text(cfg.to_yaml())
    return folder


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- pattern shards: every frame carries its own index (see tests/test_data.py) ----------------------

SIZE = (32, 32)


def pattern(video: int, frames: range, size=SIZE) -> np.ndarray:
    h, w = size
    out = np.zeros((len(frames), h, w, 3), np.uint8)
    for i, index in enumerate(frames):
        out[i, :, : w // 2] = 8 * index
        out[i, :, w // 2:] = 40 + 24 * video
    return out


def read_pattern(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 3, H, W) in [-1, 1] -> (frame index, video number), both (...)."""
    h, w = x.shape[-2:]
    level = (x[..., 0, h // 2, :] + 1) * 127.5
    return (level[..., w // 4] / 8).round().long(), ((level[..., 3 * w // 4] - 40) / 24).round().long()


def label_of(video: int, index: int) -> int:
    return int(index % 7 >= 4 + video % 2)


def frame_folders(root: Path, lengths: list[int], labelled: bool) -> Path:
    """Videos as PNG frame folders ``root/v<N>/`` (lossless), with ``v<N>.npy`` labels if asked."""
    from PIL import Image

    for video, n in enumerate(lengths):
        folder = root / f"v{video}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(pattern(video, range(n))):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
        if labelled:
            np.save(root / f"v{video}.npy", np.array([label_of(video, i) for i in range(n)], np.uint8))
    return root


def built_set(tmp: Path, lengths: list[int], split: str, codec: str, **options) -> Path:
    """Shards written by the builder (shards.build, the format's one writer)."""
    from shards.build import build

    root = frame_folders(tmp / "videos", lengths, labelled=split == "test")
    build("videofolder", root, tmp / "shards", split=split, size=SIZE, codec=codec, progress=False,
          max_samples=3, prefix="clips", **options)
    return tmp / "shards"


TRAIN_VIDEOS = 8
