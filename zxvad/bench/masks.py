"""How well O's object masks M cover objects: against the moving regions of a fixed-camera clip.

    python -m zxvad.bench masks [--video ../shared/data/real-clips/street_pedestrians_vtest.avi]
        [--size 64] [--num-frames 16] [--backbone resnet50] [--threads 1]

The camera of street_pedestrians_vtest.avi never moves, so the median of many frames is the
empty street and |frame - median| marks the pedestrians: the objects O should cut out. For each
of R's input size (model.backbone_size), depth (``layer4`` = torchvision's features before the
classifier, ``layer3`` = one stage earlier) and cut (the paper's literal A / max(A) > 0.1, SCDA's
mean, mean + k std), the table gives the mask's area, its precision (the fraction of M on moving
pixels), recall, IoU, and the lift: precision over the moving fraction of the frame, which is
what a mask placed at random scores (the named baseline; 1.0 = no better than chance).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-clips" / \
    "street_pedestrians_vtest.avi"
CUTS = ("paper", "mean", "mean+0.5std", "mean+1std", "mean+1.5std")


def add_arguments(parser) -> None:
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="a fixed-camera video")
    parser.add_argument("--size", type=int, default=64, help="training frame side (default 64)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames scored (default 16)")
    parser.add_argument("--read", type=int, default=400, help="frames read for the median (400)")
    parser.add_argument("--backbone", default="resnet50", help="R (default resnet50)")
    parser.add_argument("--backbone-sizes", default="64,128,256", help="R input sizes to try")
    parser.add_argument("--motion-threshold", type=float, default=0.08,
                        help="|frame - median| on [0, 1] grey above which a pixel moves (0.08)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def read_frames(path: str, count: int, size: int):
    """The first ``count`` frames of a video as (N, 3, size, size) float in [0, 1] (area resize)."""
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F

    if not Path(path).is_file():
        raise FileNotFoundError(f"video '{path}': no such file")
    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(np.ascontiguousarray(frame.to_ndarray(format="rgb24"))))
            if len(frames) == count:
                break
    if len(frames) < 2:
        raise ValueError(f"video '{path}': fewer than 2 frames decoded")
    x = torch.stack(frames).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=(size, size), mode="area")


def moving_masks(frames, threshold: float):
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) bool: pixels that differ from the median frame."""
    import torch.nn.functional as F

    grey = frames.mean(dim=1, keepdim=True)
    background = grey.median(dim=0, keepdim=True).values
    diff = F.avg_pool2d((grey - background).abs(), 3, stride=1, padding=1)  # drop lone noisy pixels
    return diff > threshold


def masks_with_cut(attention, cut: str, size):
    """SCDA maps (B, h, w) in [0, 1] -> masks (B, 1, H, W) bool under one cut rule."""
    import torch
    import torch.nn.functional as F

    from zxvad.synthesis import largest_component

    flat = attention.flatten(1)
    if cut == "paper":  # A / max(A) > 0.1, no component step (on the raw channel sum)
        mask = attention > 0.1
    else:
        k = 0.0 if cut == "mean" else float(cut.removeprefix("mean+").removesuffix("std"))
        level = (flat.mean(dim=1) + k * flat.std(dim=1, correction=0)).clamp_min(0.1)
        mask = largest_component(attention > level[:, None, None])
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest") > 0.5


def _raw_max_scaled(features):
    """The paper's literal map: the channel sum over its spatial max (no min-max)."""
    attention = features.sum(dim=1)
    return attention / attention.flatten(1).max(dim=1).values[:, None, None].clamp_min(1e-8)


def run(args) -> dict:
    import torch

    from zxvad.models import build_backbone
    from zxvad.synthesis import scda_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    frames = read_frames(args.video, args.read, args.size)
    moving = moving_masks(frames, args.motion_threshold)
    stride = max(len(frames) // args.num_frames, 1)
    pick = torch.arange(0, len(frames), stride)[:args.num_frames]
    frames, moving = frames[pick], moving[pick]
    moving_fraction = moving.float().mean().item()
    rows = []
    for backbone_size in (int(s) for s in args.backbone_sizes.split(",")):
        R = build_backbone(args.backbone, 0, backbone_size)
        layers = {"layer4": R.body}
        if args.backbone.startswith("resnet"):
            layers["layer3"] = R.body[:-1]
        for layer, body in layers.items():
            R.body = body
            features = R(frames * 2 - 1).float()
            for cut in CUTS:
                attention = _raw_max_scaled(features) if cut == "paper" else scda_attention(features)
                mask = masks_with_cut(attention, cut, frames.shape[-2:])
                hit = (mask & moving).flatten(1).sum(1).float()
                area = mask.flatten(1).sum(1).float()
                union = (mask | moving).flatten(1).sum(1).float()
                precision = (hit / area.clamp_min(1)).mean().item()
                rows.append({"backbone_size": backbone_size, "layer": layer, "cut": cut,
                             "map": f"{features.shape[-2]}x{features.shape[-1]}",
                             "area": area.mean().item() / moving[0].numel(),
                             "precision": precision,
                             "recall": (hit / moving.flatten(1).sum(1).clamp_min(1)).mean().item(),
                             "iou": (hit / union.clamp_min(1)).mean().item(),
                             "lift": precision / max(moving_fraction, 1e-8)})
        R.body = layers["layer4"]
    print(f"{len(pick)} frames at {args.size}x{args.size}; moving fraction {moving_fraction:.3f} "
          f"(a random mask's precision)")
    print(f"{'R size':>6} {'layer':>6} {'map':>5} {'cut':>12} {'area':>6} {'prec':>6} {'recall':>6} "
          f"{'IoU':>6} {'lift':>5}")
    for r in rows:
        print(f"{r['backbone_size']:>6} {r['layer']:>6} {r['map']:>5} {r['cut']:>12} {r['area']:6.3f} "
              f"{r['precision']:6.3f} {r['recall']:6.3f} {r['iou']:6.3f} {r['lift']:5.2f}")
    best = max(rows, key=lambda r: r["iou"])
    return {"benchmark": "masks", "video": Path(args.video).name, "size": args.size,
            "moving_fraction": moving_fraction, "best": best, "rows": rows}
