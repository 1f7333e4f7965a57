"""O: pseudo-anomaly synthesis with an untrained CNN (zxVAD, WACV 2023, sec. 3.1 and Fig. 3).

A donor frame x (from TI or VAD video) goes through the frozen random CNN R; the channel sum of
its last feature maps is the SCDA attention A (Wei et al., "Selective Convolutional Descriptor
Aggregation", 2017). The foreground mask M keeps the positions where A is high, resized to HxW.
The object M * x is then resized into a random CutMix box (Yun et al., ICCV 2019) and pasted
onto one of G's input frames v_t, replacing only mask pixels: that gives the pseudo-anomalous
frame v_tilde and its ground-truth mask M_tilde.

How A becomes M. Thresholding A / max(A) at varsigma = 0.1 (the paper's wording) marks nearly
every position of a random CNN's map as foreground: a public reproduction logged a mask area
of 1.0 at every step. Here A is min-max normalised per sample and, as in SCDA, only its
largest 8-connected component above a cut is kept. SCDA cuts at mean(A); a random CNN's map is
far smoother than a trained one's (its receptive field spans the frame), so that keeps about
half of every real frame. The cut is therefore max(varsigma, mean(A) + std(A)): on real frames
M covers about 8-25% of the frame around the most textured region, and a textured square on a flat
background is found (both are tests). A perfectly flat map gives an empty mask: nothing is
pasted then.

Everything is batched on the input's device; ``zxvad.bench.synthesis_reference`` holds a
per-sample loop with the same random draws, for the tests and ``python -m zxvad.bench synthesis``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8
SPREAD = 1.0  # the cut sits this many standard deviations of A above its mean


class Synthesis(NamedTuple):
    frames: Tensor  # (B, 3, H, W) pseudo-anomalous frames v_tilde
    mask: Tensor  # (B, 1, H, W) ground truth M_tilde, 0/1
    object_mask: Tensor  # (B, 1, Hd, Wd) donor foreground M, 0/1
    boxes: Tensor  # (B, 4) long (y0, x0, y1, x1), end exclusive
    frame_index: Tensor  # (B,) which input frame v_t was pasted on (0-based, t < T)
    mask_area: float  # mean fraction of the donor frame covered by M


ATTENTION_SCALES = ("minmax", "max")  # how N's A(.) is scaled: see scda_attention


def scda_attention(features: Tensor, scale: str = "minmax") -> Tensor:
    """SCDA attention: (B, d, h, w) features -> (B, h, w) channel sum, scaled to [0, 1].

    Differentiable, so it also serves as N's attention A(.) in the losses L_AA and L_RAA.
    ``scale="minmax"`` maps each map's minimum to 0 and maximum to 1 (O's masks use it; as N's A
    it makes L_AA's normal target A(v^) = 1 unreachable, one cell is always 0); ``"max"`` is
    sum / max|sum|, the paper's "normalised by its spatial max" (N's LeakyReLU features can sum
    below 0: dividing by the largest magnitude keeps A <= 1 and a gradient in every cell, where a
    relu would leave negative cells dead), which reaches 1 everywhere on a uniform map.
    """
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"scale '{scale}': expected one of {', '.join(ATTENTION_SCALES)}")
    attention = features.sum(dim=1)
    if scale == "max":
        high = attention.flatten(1).abs().max(dim=1).values[:, None, None]
        return attention / high.clamp_min(EPS)
    flat = attention.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    return (attention - low) / (high - low).clamp_min(EPS)


def largest_component(mask: Tensor) -> Tensor:
    """Keep the largest 8-connected component of each (h, w) boolean map in a (B, h, w) batch.

    Every foreground position starts with its own label (flat index + 1); a 3x3 max-pool spreads
    the largest label through each component until nothing changes. Ties between equally large
    components go to the one with the smallest label.
    """
    batch, height, width = mask.shape
    foreground = mask.to(torch.float32)
    ids = torch.arange(1, height * width + 1, device=mask.device, dtype=torch.float32)
    labels = ids.view(1, height, width) * foreground
    for _ in range(height * width):  # a component's diameter bounds the passes
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * foreground
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.long().flatten(1)
    sizes = torch.zeros(batch, height * width + 1, device=mask.device)
    sizes.scatter_add_(1, flat, torch.ones_like(flat, dtype=sizes.dtype))
    sizes[:, 0] = 0  # background
    best = sizes.argmax(dim=1)
    return (labels.long() == best[:, None, None]) & mask


def masks_from_features(features: Tensor, size: tuple[int, int], threshold: float = 0.1,
                        spread: float = SPREAD) -> Tensor:
    """R's features (B, d, h, w) -> foreground masks M (B, 1, H, W) as float 0/1.

    Args:
        features: R's last feature maps of the donor frames.
        size: (H, W) of the donor frames; M is upsampled to it with nearest neighbours.
        threshold: varsigma, the floor of the cut.
        spread: a position is foreground if A > max(varsigma, mean(A) + spread * std(A)).
    """
    attention = scda_attention(features.float())
    flat = attention.flatten(1)
    cut = (flat.mean(dim=1) + spread * flat.std(dim=1, correction=0)).clamp_min(threshold)
    mask = largest_component(attention > cut[:, None, None])
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")


@torch.no_grad()
def object_masks(R, donors: Tensor, threshold: float = 0.1, spread: float = SPREAD) -> Tensor:
    """Foreground masks M (B, 1, H, W), float 0/1, of donor frames (B, 3, H, W) in [-1, 1]."""
    return masks_from_features(R(donors), donors.shape[-2:], threshold, spread)


def random_boxes(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                 device=None) -> Tensor:
    """CutMix boxes (B, 4) long (y0, x0, y1, x1), end exclusive, never empty.

    beta ~ U(0, 1); the box is H sqrt(1 - beta) x W sqrt(1 - beta) around a uniform centre,
    with its corners clipped to the frame.
    """
    draw_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch, 3, generator=generator, device=draw_device)
    ratio = (1 - u[:, 0]).sqrt()
    half_h = (height * ratio).long() // 2
    half_w = (width * ratio).long() // 2
    cy = (u[:, 1] * height).long().clamp(max=height - 1)
    cx = (u[:, 2] * width).long().clamp(max=width - 1)
    y0, x0 = (cy - half_h).clamp(min=0), (cx - half_w).clamp(min=0)
    y1 = torch.maximum((cy + half_h).clamp(max=height), y0 + 1)
    x1 = torch.maximum((cx + half_w).clamp(max=width), x0 + 1)
    return torch.stack([y0, x0, y1, x1], dim=1).to(device if device is not None else draw_device)


def _source_index(start: Tensor, end: Tensor, size: int, source_size: int) -> Tensor:
    """Nearest source pixel of each target pixel 0..size-1 when a whole source axis of
    ``source_size`` pixels is resized into [start, end): floor((i - start + 0.5) * scale) with
    scale = source_size / (end - start), in float32 as ``F.interpolate(mode="nearest-exact")``
    computes it, so that exact ties round the same way (``int / tensor`` would not: it rounds
    the division differently). Pixels outside [start, end) get ``source_size``, one past the
    end. (B,) -> (B, size) long."""
    length = (end - start).to(torch.float32)
    scale = torch.full_like(length, source_size) / length
    offset = torch.arange(size, device=start.device)[None] - start[:, None]
    index = torch.floor((offset.to(torch.float32) + 0.5) * scale[:, None]).long()
    outside = (offset < 0) | (offset >= (end - start)[:, None])
    return index.clamp(0, source_size - 1).masked_fill(outside, source_size)


def paste(targets: Tensor, donors: Tensor, masks: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Resize each masked donor into its box on its target, replacing only mask pixels.

    Each target pixel in a box reads its nearest donor pixel: the box is the whole donor frame
    scaled, so one row and one column index per sample give the lookup. The mask is looked up
    for the whole batch at once, then only the pixels it selects are copied (they are few, so
    this beats a dense resample of all frames). Nearest rather than bilinear: objects only
    ever shrink (the box lies inside the frame), where bilinear without antialiasing aliases
    just as much, and M_tilde stays exactly the resized M.

    Args:
        targets: (B, 3, H, W) frames v_t to paste on.
        donors: (B, 3, Hd, Wd) donor frames x.
        masks: (B, 1, Hd, Wd) their foreground masks M, 0/1.
        boxes: (B, 4) long (y0, x0, y1, x1) in target pixels, end exclusive.

    Returns:
        The pseudo-anomalous frames (B, 3, H, W) and their ground-truth masks M_tilde
        (B, 1, H, W) as float 0/1.
    """
    batch, _, height, width = targets.shape
    donor_h, donor_w = donors.shape[-2:]
    y0, x0, y1, x1 = boxes.to(targets.device).unbind(dim=1)
    rows = _source_index(y0, y1, height, donor_h)
    cols = _source_index(x0, x1, width, donor_w)
    # rows and columns outside the box read an extra all-zero row and column of the mask
    inside = F.pad(masks[:, 0] > 0.5, (0, 1, 0, 1))  # (B, Hd + 1, Wd + 1)
    inside = inside.gather(1, rows[:, :, None].expand(-1, -1, donor_w + 1))
    pasted = inside.gather(2, cols[:, None, :].expand(-1, height, -1))  # (B, H, W)
    sample, i, j = pasted.nonzero(as_tuple=True)
    frames = targets.clone()
    frames[sample, :, i, j] = donors[sample, :, rows[sample, i], cols[sample, j]].to(frames.dtype)
    return frames, pasted[:, None].to(targets.dtype)


def input_frame_count(clips: Tensor, T: int | None) -> int:
    """T: the number of input frames v_1..v_T in ``clips`` that O may paste on."""
    if clips.dim() != 5 or clips.shape[2] != 3:
        raise ValueError(f"clips of shape {tuple(clips.shape)}: expected (B, T+1, 3, H, W)")
    count = T if T is not None else max(clips.shape[1] - 1, 1)
    if not 1 <= count <= clips.shape[1]:
        raise ValueError(f"T={T}: expected 1..{clips.shape[1]} for clips of length "
                         f"{clips.shape[1]}")
    return count


def draw(batch: int, T: int, height: int, width: int, generator: torch.Generator | None,
         device) -> tuple[Tensor, Tensor]:
    """O's random draws, in this order: the input frame t of each sample, then its box."""
    draw_device = generator.device if generator is not None else torch.device("cpu")
    frame_index = torch.randint(0, T, (batch,), generator=generator, device=draw_device)
    boxes = random_boxes(batch, height, width, generator)
    return frame_index.to(device), boxes.to(device)


def synthesize(clips: Tensor, donors: Tensor, R, threshold: float = 0.1,
               generator: torch.Generator | None = None, T: int | None = None,
               spread: float = SPREAD) -> Synthesis:
    """O: paste one donor object onto one input frame per clip.

    Args:
        clips: (B, T+1, 3, H, W) training clips in [-1, 1]; the last frame is G's target and is
            never pasted on. For a (B, T, 3, H, W) tensor of inputs only, pass ``T``.
        donors: (B, 3, Hd, Wd) donor frames in [-1, 1].
        R: the frozen backbone (see :func:`zxvad.models.build_backbone`).
        threshold: varsigma, the floor of the attention threshold.
        generator: random source of the frame choice and the boxes (on any device).
        T: G's input frames, the ones O may paste on; default ``clips.shape[1] - 1``.
        spread: k of the cut max(varsigma, mean(A) + k std(A)) (see :func:`masks_from_features`).
    """
    count = input_frame_count(clips, T)
    batch, _, _, height, width = clips.shape
    frame_index, boxes = draw(batch, count, height, width, generator, clips.device)
    object_mask = object_masks(R, donors, threshold, spread)
    targets = clips[torch.arange(batch, device=clips.device), frame_index]
    pseudo, mask = paste(targets, donors, object_mask, boxes)
    return Synthesis(pseudo, mask, object_mask, boxes, frame_index, float(object_mask.mean()))
