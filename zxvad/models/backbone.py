"""R: an untrained, randomly initialised, frozen torchvision CNN whose features localise objects.

zxVAD (WACV 2023, sec. 3.1) sums R's last feature maps over channels (SCDA) to find foreground
objects in donor frames: textureless background tends to be switched off by the ReLUs even with
random weights (Ulyanov et al., "Deep Image Prior"). No weights are ever downloaded: R is built
with ``weights=None`` under a fixed seed, so a checkpoint only needs to record (name, seed).
"""

from __future__ import annotations

import torch
import torchvision
import torch.nn.functional as F
from torch import Tensor, nn

from zxvad.config import BACKBONES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _feature_extractor(name: str) -> nn.Module:
    """The torchvision model ``name`` up to its last feature maps (no pooling, no classifier)."""
    model = getattr(torchvision.models, name)(weights=None)
    if name.startswith("resnet"):
        return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    if name.startswith("densenet"):
        return nn.Sequential(model.features, nn.ReLU())  # torchvision applies this ReLU in forward
    if name == "alexnet":
        return model.features
    return model.layers  # mnasnet: ends with the 1280-channel conv, BN and ReLU


class FrozenBackbone(nn.Module):
    """Wraps a feature extractor: [-1, 1] input, no gradients, always in eval mode."""

    def __init__(self, body: nn.Module, name: str, seed: int, input_size: int = 0):
        super().__init__()
        self.input_size = input_size
        self.body = body.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        self.name = name
        self.seed = seed
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)  # batch norms keep their init statistics

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> feature maps (B, d, h, w)."""
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            # small frames give a map of 1-2 cells, too coarse to localise an object
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.body(x.contiguous(memory_format=torch.channels_last))


def build_backbone(name: str = "resnet50", seed: int = 0, input_size: int = 0,
                   layer: str = "last") -> nn.Module:
    """R: the named torchvision CNN with random weights drawn under ``seed``, frozen.

    Args:
        name: one of resnet50, resnet152, densenet161, alexnet, mnasnet1_0.
        seed: the same seed gives the same weights; the global RNG is left untouched.
        input_size: if set, inputs are resized to this square size before R (not the weights).
        layer: "last" (the paper: R's last feature maps) or "layer3" (resnets only: the stage
            before, twice the resolution; ``python -m zxvad.bench masks`` measures both).

    Returns:
        A :class:`FrozenBackbone` mapping (B, 3, H, W) in [-1, 1] to (B, d, h, w) features.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone '{name}': expected one of {', '.join(BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = _feature_extractor(name)
    if layer == "layer3" and name.startswith("resnet"):
        body = body[:-1]  # drop layer4: the same weights up to layer3, drawn under the same seed
    elif layer != "last":
        raise ValueError(f"backbone layer '{layer}': expected 'last', or 'layer3' with a resnet")
    return FrozenBackbone(body, name, seed, input_size)
