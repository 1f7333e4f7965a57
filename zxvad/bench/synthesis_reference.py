"""O as a per-sample loop with the same random draws as :func:`zxvad.synthesis.synthesize`.

Step by step with numpy, scipy and ``F.interpolate``: the tests check the batched O against it
and ``python -m zxvad.bench synthesis`` times it as the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zxvad.synthesis import EPS, SPREAD, Synthesis, draw, input_frame_count


def largest_component_reference(mask):
    """Per-map scipy labelling with the same tie rule as :func:`largest_component`."""
    import numpy as np
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if count == 0:
        return mask
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)[1:]
    last_index = np.array([np.flatnonzero(flat == k).max() for k in range(1, count + 1)])
    best = min(np.flatnonzero(sizes == sizes.max()), key=lambda k: last_index[k])
    return labels == best + 1


def mask_from_features_reference(features: Tensor, size: tuple[int, int],
                                 threshold: float = 0.1) -> Tensor:
    """One sample's features (d, h, w) -> its mask (1, H, W), step by step with numpy and scipy."""
    attention = features.float().sum(dim=0)
    attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp_min(EPS)
    cut = max(threshold, attention.mean().item() + SPREAD * attention.std(correction=0).item())
    mask = largest_component_reference((attention > cut).cpu().numpy())
    mask = torch.from_numpy(mask).to(features.device, torch.float32)
    return F.interpolate(mask[None, None], size=size, mode="nearest")[0]


@torch.no_grad()
def object_mask_reference(R, donor: Tensor, threshold: float = 0.1) -> Tensor:
    """One donor (3, H, W) -> its mask (1, H, W): R on a batch of one, then the steps above."""
    return mask_from_features_reference(R(donor[None])[0], donor.shape[-2:], threshold)


def paste_reference(target: Tensor, donor: Tensor, mask: Tensor, box) -> tuple[Tensor, Tensor]:
    """One sample: resize donor and mask into the box with ``F.interpolate``, copy mask pixels."""
    y0, x0, y1, x1 = (int(v) for v in box)
    size = (y1 - y0, x1 - x0)
    obj = F.interpolate(donor[None].float(), size=size, mode="nearest-exact")[0]
    inside = F.interpolate(mask[None].float(), size=size, mode="nearest-exact")[0] > 0.5
    frame, truth = target.clone(), torch.zeros_like(target[:1])
    frame[:, y0:y1, x0:x1] = torch.where(inside, obj.to(target.dtype), frame[:, y0:y1, x0:x1])
    truth[:, y0:y1, x0:x1] = inside.to(target.dtype)
    return frame, truth


def synthesize_reference(clips: Tensor, donors: Tensor, R, threshold: float = 0.1,
                         generator: torch.Generator | None = None,
                         T: int | None = None) -> Synthesis:
    """:func:`synthesize` as a per-sample loop (R, mask and paste one sample at a time)."""
    count = input_frame_count(clips, T)
    batch, _, _, height, width = clips.shape
    frame_index, boxes = draw(batch, count, height, width, generator, clips.device)
    object_mask = torch.stack([object_mask_reference(R, donor, threshold) for donor in donors])
    pseudo, mask = [], []
    for b in range(batch):
        frame, truth = paste_reference(clips[b, int(frame_index[b])], donors[b], object_mask[b],
                                       boxes[b].tolist())
        pseudo.append(frame)
        mask.append(truth)
    return Synthesis(torch.stack(pseudo), torch.stack(mask), object_mask, boxes, frame_index,
                     float(object_mask.mean()))
