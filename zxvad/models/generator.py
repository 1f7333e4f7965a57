"""G: the future-frame prediction U-Net with a MemAE memory at its bottleneck.

References:
    Liu et al., "Future Frame Prediction for Anomaly Detection - A New Baseline", CVPR 2018
    (the U-Net: levels 64/128/256/512, two 3x3 conv + ReLU per level, no normalisation).
    Gong et al., "Memorizing Normality to Detect Anomaly" (MemAE), ICCV 2019 (the memory).
    Aich et al., "Cross-Domain Video Anomaly Detection without Target Domain Adaptation"
    (zxVAD), WACV 2023, sec. 3: G([v_1..v_T]) = v_hat_{T+1}, memory with lambda = 0.0005.

At 256x256, width 64 and T = 4 the plain U-Net has exactly 7,704,195 parameters, as in Liu et
al.; the memory adds K x Q = 2000 x 512 items, giving the paper's 8.73M. The memory read-out
z_hat = w_hat M replaces the bottleneck features (as in MemAE), so the decoder is unchanged and
the parameter count stays that of the paper.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeneratorOutput(NamedTuple):
    prediction: Tensor  # (B, 3, H, W) in [-1, 1]
    memory_weights: Tensor  # (B, K, h, w) shrunk, L1-renormalised addressing weights (L_MEM's input)


SHRINKS = ("continuous", "hard")
QUERIES = ("raw", "centred")
OUTPUTS = ("frame", "residual")


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """One U-Net level: two 3x3 convolutions, each followed by a ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class Down(nn.Module):
    """Max-pool by 2, then one level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = double_conv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.max_pool2d(x, 2))


class Up(nn.Module):
    """2x2 transposed conv up (halving channels), concatenate the skip, then one level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = double_conv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class MemoryModule(nn.Module):
    """MemAE memory: K items of size Q, read by cosine attention with hard shrinkage.

    For each bottleneck position z (a Q-vector): w = softmax_i(cos(z, m_i) / tau); the hard
    shrinkage zeroes weights under lambda; the rest is L1 re-normalised and z_hat = w' M.
    With tau = 1 the logits lie in [-1, 1], so no weight can leave [1/(e^2 K), e^2/K]: the
    paper's literal setting can never be sparse; a small tau lets one item win.

    Args:
        items: K, the number of memory items.
        dim: Q, the size of one item (G's bottleneck channels).
        shrink_threshold: lambda of the hard shrinkage (absolute; 0 switches it off).
        temperature: tau of the addressing softmax.
        shrink: "continuous", MemAE's relu(w - lambda) w / (|w - lambda| + eps), whose
            derivative reaches w / eps at w = lambda; or "hard", w [w > lambda], its eps -> 0
            limit, with derivative 1 on the kept weights and 0 on the others.
        eps: MemAE's epsilon of the continuous shrinkage and of log(0) in the entropy.
        query: "raw" addresses with z itself (the paper); "centred" with z minus its mean over
            the sample's positions. G's bottleneck ends in a ReLU, so raw queries all lie in the
            positive orthant, close to one another in angle: the item nearest that cone wins
            at every position and the memory collapses to one item. Centring compares each
            position with the rest of its own frame (no batch statistics, so a clip scores the
            same alone or in a batch); the read-out z_hat = w' M is unchanged.
    """

    def __init__(self, items: int, dim: int, shrink_threshold: float = 0.0005,
                 temperature: float = 1.0, shrink: str = "continuous", eps: float = 1e-12,
                 query: str = "raw"):
        super().__init__()
        if shrink not in SHRINKS:
            raise ValueError(f"shrink '{shrink}': expected one of {', '.join(SHRINKS)}")
        if query not in QUERIES:
            raise ValueError(f"query '{query}': expected one of {', '.join(QUERIES)}")
        self.query = query
        self.shrink_threshold = shrink_threshold
        self.temperature = temperature
        self.shrink = shrink
        self.eps = eps
        self.items = nn.Parameter(torch.empty(items, dim))
        bound = 1.0 / dim**0.5  # MemAE's uniform init
        nn.init.uniform_(self.items, -bound, bound)

    def address(self, z: Tensor) -> Tensor:
        """(N, Q) queries -> (N, K) shrunk, L1-renormalised weights w'."""
        cosine = F.normalize(z, dim=1) @ F.normalize(self.items, dim=1).t()
        w = (cosine / self.temperature).softmax(dim=1)
        if self.shrink_threshold > 0:
            shifted = w - self.shrink_threshold
            if self.shrink == "hard":
                w = w * (shifted > 0)
            else:
                w = F.relu(shifted) * w / (shifted.abs() + self.eps)
        return F.normalize(w, p=1, dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Read the memory at every position of a feature map.

        Args:
            z: (B, Q, h, w) bottleneck features.

        Returns:
            z_hat (B, Q, h, w) and the weights w' (B, K, h, w); L_MEM is
            :func:`zxvad.losses.memory_loss` of the weights.
        """
        batch, dim, height, width = z.shape
        q = z - z.mean(dim=(2, 3), keepdim=True) if self.query == "centred" else z
        queries = q.permute(0, 2, 3, 1).reshape(-1, dim)
        weights = self.address(queries)
        z_hat = (weights @ self.items).reshape(batch, height, width, dim).permute(0, 3, 1, 2)
        return z_hat, weights.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


class Generator(nn.Module):
    """G: T frames (B, T, 3, H, W) in [-1, 1] -> predicted frame T+1 (B, 3, H, W) in [-1, 1].

    Args:
        T: the number of input frames (G's input has 3T channels).
        width: channels of the first level; the levels are width, 2w, 4w, 8w.
        memory_items: K; 0 builds the plain U-Net of Liu et al. without memory.
        memory_dim: Q; must equal 8 * width, the bottleneck channels.
        shrink_threshold: lambda of the memory's hard shrinkage.
        temperature, shrink, query: the memory's addressing (see :class:`MemoryModule`).
        output: "frame", tanh of the last layer (Liu et al., the paper); or "residual", beyond
            the paper: v_T plus the last layer, clipped to [-1, 1], with the last layer
            initialised to zero, so an untrained G repeats the last frame and training learns
            only the change (the trivial copy_last predictor is G's starting point, not a
            target it must first learn to reach through the U-Net).
    """

    def __init__(self, T: int = 4, width: int = 64, memory_items: int = 2000,
                 memory_dim: int = 512, shrink_threshold: float = 0.0005,
                 temperature: float = 1.0, shrink: str = "continuous", query: str = "raw",
                 output: str = "frame"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output '{output}': expected one of {', '.join(OUTPUTS)}")
        self.output = output
        if memory_items > 0 and memory_dim != 8 * width:
            raise ValueError(f"memory_dim={memory_dim}: must equal 8 * width = {8 * width} "
                             "(G's bottleneck channels)")
        self.T = T
        w = width
        self.inc = double_conv(3 * T, w)
        self.down1, self.down2, self.down3 = Down(w, 2 * w), Down(2 * w, 4 * w), Down(4 * w, 8 * w)
        self.memory = (MemoryModule(memory_items, memory_dim, shrink_threshold, temperature, shrink,
                                    query=query)
                       if memory_items > 0 else None)
        self.up1, self.up2, self.up3 = Up(8 * w, 4 * w), Up(4 * w, 2 * w), Up(2 * w, w)
        self.outc = nn.Conv2d(w, 3, 3, padding=1)
        if output == "residual":
            nn.init.zeros_(self.outc.weight)
            nn.init.zeros_(self.outc.bias)

    def forward(self, frames: Tensor) -> GeneratorOutput:
        if frames.dim() != 5 or frames.shape[1] != self.T or frames.shape[2] != 3:
            raise ValueError(f"G input of shape {tuple(frames.shape)}: expected "
                             f"(B, {self.T}, 3, H, W)")
        if frames.shape[3] % 8 or frames.shape[4] % 8:
            raise ValueError(f"G input of size {frames.shape[3]}x{frames.shape[4]}: "
                             "H and W must be multiples of 8 (three 2x poolings)")
        x1 = self.inc(frames.flatten(1, 2))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        z = self.down3(x3)
        if self.memory is not None:
            z, weights = self.memory(z)
        else:
            weights = z.new_zeros(z.shape[0], 0, *z.shape[2:])
        x = self.up1(z, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        if self.output == "residual":
            prediction = (frames[:, -1] + self.outc(x)).clamp(-1, 1)
        else:
            prediction = torch.tanh(self.outc(x))
        return GeneratorOutput(prediction, weights)


class PredictionOnly(nn.Module):
    """G with only its predicted frame as output: what MLflow's pyfunc serves (one tensor out)."""

    def __init__(self, G: Generator):
        super().__init__()
        self.G = G

    def forward(self, frames: Tensor) -> Tensor:
        return self.G(frames).prediction
