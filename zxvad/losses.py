"""The zxVAD objectives: eq. (1) for G, the LSGAN loss of D, and eq. (2)-(6) for N.

References:
    Aich et al., "Cross-Domain Video Anomaly Detection without Target Domain Adaptation"
    (zxVAD), WACV 2023, sec. 3 (equation numbers below are that paper's).
    Liu et al., "Future Frame Prediction for Anomaly Detection - A New Baseline", CVPR 2018
    (intensity and gradient losses, LSGAN terms).
    Gong et al., "Memorizing Normality to Detect Anomaly" (MemAE), ICCV 2019 (entropy loss).
    Deng et al., "ArcFace", CVPR 2019 (L_RAA, through pytorch-metric-learning; :class:`ArcFace`).

Conventions: images are (B, 3, H, W) in [-1, 1], as G produces them; SSIM and the
augmentation g work on [0, 1] copies. Discriminator and classifier outputs are patch logits
(B, 1, h, w); every expectation is a mean over the batch and the patches. Losses are computed
in float32 whatever the autocast dtype of the networks. All weights come from
:class:`zxvad.config.LossConfig`.
"""

from __future__ import annotations

import kornia
import kornia.augmentation as K
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import Tensor, nn

from zxvad.config import LossConfig

SSIM_WINDOW = 11  # Wang et al. 2004
NORMAL, ABNORMAL = 1, 0  # L_RAA labels, as in the paper (y=1 for v^ and g(v^), 0 for v~)


def _unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) / 2


# ----------------------------------------------------------------------------- L_REC, L_MEM


def intensity_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_MSE of eq. (1): mean squared error (on the [-1, 1] images, as in Liu et al.)."""
    return F.mse_loss(pred.float(), target.float())


def gradient_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_GD of eq. (1): gradient difference loss of Liu et al. 2018 (alpha = 1).

    Mean over pixels of | |dx pred| - |dx target| | plus the same along y, with dx, dy the
    differences of neighbouring pixels (no border padding).
    """
    pred, target = pred.float(), target.float()
    pdx = (pred[..., :, 1:] - pred[..., :, :-1]).abs()
    tdx = (target[..., :, 1:] - target[..., :, :-1]).abs()
    pdy = (pred[..., 1:, :] - pred[..., :-1, :]).abs()
    tdy = (target[..., 1:, :] - target[..., :-1, :]).abs()
    return (pdx - tdx).abs().mean() + (pdy - tdy).abs().mean()


def ssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_SSM of eq. (1): 1 - SSIM on [0, 1] images (11x11 Gaussian window, mean over the map).

    kornia's own ``ssim_loss`` returns (1 - SSIM) / 2, so SSIM is taken from kornia.metrics.
    """
    ssim_map = kornia.metrics.ssim(_unit(pred.float()), _unit(target.float()), SSIM_WINDOW,
                                   max_val=1.0)
    return 1 - ssim_map.mean()


def reconstruction_loss(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """L_REC = L_MSE + L_SSM + L_GD (eq. 1).

    Returns:
        ``{"mse", "ssim", "gd", "rec"}``; ``rec`` is the sum of the other three.
    """
    mse, ssim, gd = intensity_loss(pred, target), ssim_loss(pred, target), gradient_loss(pred, target)
    return {"mse": mse, "ssim": ssim, "gd": gd, "rec": mse + ssim + gd}


def memory_loss(weights: Tensor, eps: float = 1e-12) -> Tensor:
    """L_MEM of eq. (1): entropy sum_i -w_i log w_i of the addressing weights, mean over positions.

    Args:
        weights: (B, K, h, w) shrunk, L1-normalised addressing weights (dim 1 sums to 1); K = 0
            (G without memory) gives 0. A cut weight w = 0 adds 0 * log(eps) = 0.
    """
    w = weights.float()
    return (-w * torch.log(w + eps)).sum(dim=1).mean()


# ----------------------------------------------------------------------------- G and D (LSGAN)


def lsgan_generator_term(logits: Tensor) -> Tensor:
    """E[1/2 (X(v^) - 1)^2], the adversarial terms of L_G in eq. (6) (X = D or N)."""
    return 0.5 * (logits.float() - 1).pow(2).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D of eq. (6): 1/2 E[D(v^)^2] + 1/2 E[(D(v_{T+1}) - 1)^2]."""
    return 0.5 * fake_logits.float().pow(2).mean() + 0.5 * (real_logits.float() - 1).pow(2).mean()


# ----------------------------------------------------------------------------- N: eq. (2)-(5)


def normalcy_loss(n_normal: Tensor, n_pseudo: Tensor) -> Tensor:
    """L_N of eq. (2): 1/2 E[(N(v^) - 1)^2] + 1/2 E[N(v~)^2]."""
    return 0.5 * (n_normal.float() - 1).pow(2).mean() + 0.5 * n_pseudo.float().pow(2).mean()


def relative_normalcy_loss(n_normal: Tensor, n_pseudo: Tensor) -> Tensor:
    """L_RN of eq. (3): relativistic average LSGAN; v^ should score 1 above the mean of v~.

    The inner expectations are means over the batch, per patch (relativistic average GAN).
    """
    n_normal, n_pseudo = n_normal.float(), n_pseudo.float()
    mean_normal = n_normal.mean(dim=0, keepdim=True)
    mean_pseudo = n_pseudo.mean(dim=0, keepdim=True)
    return (0.5 * (n_normal - mean_pseudo - 1).pow(2).mean()
            + 0.5 * (n_pseudo - mean_normal + 1).pow(2).mean())


def attention_affirmation_loss(att_normal: Tensor, att_pseudo: Tensor, mask: Tensor) -> Tensor:
    """L_AA of eq. (4): 1/2 (1 - A(v^))^2 + 1/2 (M~ - A(v~))^2, mean over the map and batch.

    Args:
        att_normal: (B, h, w) attention A(v^) in [0, 1].
        att_pseudo: (B, h, w) attention A(v~) in [0, 1].
        mask: (B, 1, H, W) pasted-object mask M~ (0/1); area-resized to (h, w), so a cell's
            target is the fraction of it that the object covers.
    """
    att_normal, att_pseudo = att_normal.float(), att_pseudo.float()
    target = F.interpolate(mask.float(), size=att_pseudo.shape[-2:], mode="area")[:, 0]
    return 0.5 * (1 - att_normal).pow(2).mean() + 0.5 * (target - att_pseudo).pow(2).mean()


class ArcFace(nn.Module):
    """The ArcFace head of L_RAA (eq. 5): class centres W (``embedding_size`` x 2) that train with N.

    ``forward`` returns L_RAA over vec(A(.)) with classes normal (v^, g(v^)) and abnormal (v~).
    With s = 64 the loss is s times a cosine gap (12-30 at the start) and its gradient is ~s, so
    ``normalise=True`` divides it by s: the same minimiser, on the scale of the other terms of N.
    """

    def __init__(self, embedding_size: int, margin: float = 28.6, scale: float = 64.0,
                 normalise: bool = False):
        super().__init__()
        self.embedding_size = embedding_size
        self.divisor = scale if normalise else 1.0
        self.arcface = ArcFaceLoss(num_classes=2, embedding_size=embedding_size, margin=margin,
                                   scale=scale)

    def forward(self, att_normal: Tensor, att_augmented: Tensor, att_pseudo: Tensor) -> Tensor:
        """L_RAA of eq. (5) over the 3B attention maps A(v^), A(g(v^)), A(v~), each (B, h, w)."""
        maps = [att_normal, att_augmented, att_pseudo]
        embeddings = torch.cat([a.flatten(1) for a in maps]).float()
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"attention maps of {embeddings.shape[1]} cells; L_RAA was built for "
                             f"{self.embedding_size} (h' x w' of N's last features)")
        b = att_normal.shape[0]
        labels = torch.tensor([NORMAL] * 2 * b + [ABNORMAL] * att_pseudo.shape[0],
                              device=embeddings.device)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.arcface(embeddings, labels) / self.divisor


def build_augmentation() -> nn.Module:
    """g of eq. (5): ColorJitter(.1, .1, .1, .1) + RandomAffine(360) + RandomPerspective(0.2).

    Every transform is applied (p=1) to every image; input and output are [0, 1] images.
    """
    return K.AugmentationSequential(
        K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=1.0),
        K.RandomAffine(degrees=360, p=1.0),
        K.RandomPerspective(distortion_scale=0.2, p=1.0),
    )


# ----------------------------------------------------------------------------- the objectives


def static_change_loss(pred: Tensor, last: Tensor, target: Tensor, threshold: float) -> Tensor:
    """Mean squared change v^ - v_T over the pixels where v_{T+1} does not move (beyond the paper).

    A pixel is static where every channel of |v_{T+1} - v_T| is below ``threshold`` on [0, 1];
    0 when no pixel is static. Keeps G at copy_last on the background, where any change it makes
    is error that hides the motion the anomaly score is made of.
    """
    pred, last, target = pred.float(), last.float(), target.float()
    static = ((target - last).abs().amax(dim=1, keepdim=True) < 2 * threshold).float()
    change = (pred - last).pow(2).mean(dim=1, keepdim=True)
    return (change * static).sum() / static.sum().clamp_min(1.0)


def generator_objective(pred: Tensor, target: Tensor, memory_weights: Tensor, d_logits: Tensor,
                        n_logits: Tensor | None, cfg: LossConfig,
                        last: Tensor | None = None) -> dict[str, Tensor]:
    """L_G of eq. (6): L_BB + alpha_D 1/2 (D(v^)-1)^2 + alpha_N 1/2 (N(v^)-1)^2.

    L_BB = L_REC + mem_weight L_MEM (eq. 1).

    Args:
        pred, target: v^_{T+1} and v_{T+1}, (B, 3, H, W) in [-1, 1].
        memory_weights: G's addressing weights (B, K, h, w), for L_MEM.
        d_logits, n_logits: D(v^) and N(v^); ``n_logits`` None switches the N term off.
        cfg: the loss weights.
        last: v_T, for the static-pixel term (``cfg.static_weight`` > 0; beyond the paper).

    Returns:
        ``l_mse, l_ssim, l_gd, l_rec, l_mem, l_bb, l_g_adv_d, l_g_adv_n, l_static, l_g``.
    """
    rec = reconstruction_loss(pred, target)
    l_mem = memory_loss(memory_weights)
    l_bb = rec["rec"] + cfg.mem_weight * l_mem
    l_g_adv_d = lsgan_generator_term(d_logits)
    l_g_adv_n = lsgan_generator_term(n_logits) if n_logits is not None else l_bb.new_zeros(())
    l_g = l_bb + cfg.alpha_D * l_g_adv_d + cfg.alpha_N * l_g_adv_n
    l_static = l_bb.new_zeros(())
    if cfg.static_weight > 0:
        if last is None:
            raise ValueError("generator_objective: loss.static_weight > 0 needs v_T (last)")
        l_static = static_change_loss(pred, last, target, cfg.static_threshold)
        l_g = l_g + cfg.static_weight * l_static
    return {"l_mse": rec["mse"], "l_ssim": rec["ssim"], "l_gd": rec["gd"], "l_rec": rec["rec"],
            "l_mem": l_mem, "l_bb": l_bb, "l_g_adv_d": l_g_adv_d, "l_g_adv_n": l_g_adv_n,
            "l_static": l_static, "l_g": l_g}


def normalcy_objective(n_normal: Tensor, n_pseudo: Tensor, att_normal: Tensor,
                       att_augmented: Tensor, att_pseudo: Tensor, mask: Tensor,
                       arcface: ArcFace, cfg: LossConfig) -> dict[str, Tensor]:
    """L_N total of eq. (6): alpha_n L_N + alpha_m L_RN + alpha_aa L_AA + alpha_raa L_RAA.

    Args:
        n_normal, n_pseudo: N(v^) and N(v~) patch logits.
        att_normal, att_augmented, att_pseudo: A(v^), A(g(v^)), A(v~), each (B, h, w).
        mask: M~, (B, 1, H, W).
        arcface: the ArcFace head of L_RAA (its W trains with N).
        cfg: the loss weights.

    Returns:
        ``l_n, l_rn, l_aa, l_raa, l_n_total`` (scalar tensors).
    """
    l_n = normalcy_loss(n_normal, n_pseudo)
    l_rn = relative_normalcy_loss(n_normal, n_pseudo)
    l_aa = attention_affirmation_loss(att_normal, att_pseudo, mask)
    l_raa = arcface(att_normal, att_augmented, att_pseudo)
    total = cfg.alpha_n * l_n + cfg.alpha_m * l_rn + cfg.alpha_aa * l_aa + cfg.alpha_raa * l_raa
    return {"l_n": l_n, "l_rn": l_rn, "l_aa": l_aa, "l_raa": l_raa, "l_n_total": total}
