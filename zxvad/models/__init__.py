"""The zxVAD networks: G (memory U-Net), D and N (PatchGANs) and R (untrained frozen CNN).

``build_models(cfg.model)`` makes all four from a :class:`zxvad.config.ModelConfig`; the
pseudo-anomaly synthesis O that uses R lives in :mod:`zxvad.synthesis`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from zxvad.models.backbone import BACKBONES, FrozenBackbone, build_backbone
from zxvad.models.discriminator import PatchDiscriminator
from zxvad.models.generator import Generator, GeneratorOutput, MemoryModule

__all__ = ["BACKBONES", "FrozenBackbone", "Generator", "GeneratorOutput", "MemoryModule", "Models",
           "PatchDiscriminator", "build_backbone", "build_generator", "build_models",
           "count_parameters", "generator_gmacs"]


@dataclass
class Models:
    """The four networks of zxVAD: G predicts, D and N discriminate, R localises objects for O."""

    G: nn.Module
    D: nn.Module
    N: nn.Module
    R: nn.Module


def shrink_threshold(cfg) -> float:
    """The memory's lambda: shrink_relative / K when set, else the absolute shrink_threshold."""
    return cfg.shrink_relative / cfg.memory_items if cfg.shrink_relative > 0 else cfg.shrink_threshold


def build_generator(cfg) -> Generator:
    """G from a :class:`zxvad.config.ModelConfig`."""
    return Generator(T=cfg.T, width=cfg.width, memory_items=cfg.memory_items,
                     memory_dim=cfg.memory_dim, shrink_threshold=shrink_threshold(cfg),
                     temperature=cfg.memory_temperature, shrink=cfg.memory_shrink,
                     query=cfg.memory_query, output=cfg.output)


def build_models(cfg) -> Models:
    """G, D, N and R from a :class:`zxvad.config.ModelConfig`, all on the CPU."""
    return Models(G=build_generator(cfg),
                  D=PatchDiscriminator(3, cfg.disc_width, cfg.disc_layers, cfg.critic_norm),
                  N=PatchDiscriminator(3, cfg.disc_width, cfg.disc_layers, cfg.critic_norm),
                  R=build_backbone(cfg.backbone, cfg.backbone_seed, cfg.backbone_size,
                                   cfg.backbone_layer))


def count_parameters(module: nn.Module) -> int:
    """All parameters of ``module``, trainable or not (the paper's "Params")."""
    return sum(p.numel() for p in module.parameters())


def generator_gmacs(G: nn.Module, image_size: int, T: int) -> float:
    """G's multiply-accumulates for one (1, T, 3, S, S) sample, in billions (FLOPs / 2).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy of G, so it
    costs no real compute and leaves G where it is.
    """
    from torch.utils.flop_counter import FlopCounterMode

    G = getattr(G, "module", G)  # DistributedDataParallel
    meta = copy.deepcopy(G).to("meta")
    x = torch.zeros(1, T, 3, image_size, image_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() / 2 / 1e9
