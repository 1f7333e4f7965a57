"""DistributedDataParallel in one place: wrapping the trained networks, and unwrapping any module.

Pure torch; checkpoints and evaluation always see the unwrapped modules.
"""

from __future__ import annotations

import torch
from torch import nn

TRAINED = ("G", "D", "N", "arcface")  # R is frozen and needs no gradient sync


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def wrap_trained(state, device: torch.device) -> None:
    """G, D, N and the ArcFace weights of a ``TrainState`` under DDP, in place."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    for name in TRAINED:
        module = getattr(state, name)
        if any(p.requires_grad for p in module.parameters()):
            setattr(state, name, DDP(module, device_ids=ids))
