"""Batched pseudo-anomaly synthesis O against a per-sample Python loop, on the CPU.

    python -m zxvad.bench synthesis --batch 32 --size 128 --repeats 3

Two stages are timed, each batched (``zxvad.synthesis``) and as the per-sample loop
(``synthesize_reference``, the same random draws): the mask-and-paste stage alone (R's
features computed once beforehand) and the whole of O including R's forward pass.
Goals: paste_ratio >= 5 and total_ratio >= 1.5 (loop time / batched time, medians).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    parser.add_argument("--T", type=int, default=4, help="T input frames per clip (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--backbone", default="resnet50", help="R (default resnet50)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)


def _donors(batch: int, size: int, generator):
    """Flat frames with one textured rectangle each: something for R to find."""
    import torch

    donors = torch.rand(batch, 3, 1, 1, generator=generator).expand(batch, 3, size, size) - 0.5
    donors = donors.clone()
    corners = torch.randint(0, size // 2, (batch, 2), generator=generator).tolist()
    for b, (y, x) in enumerate(corners):
        side = size // 3
        texture = torch.rand(3, side, side, generator=generator)
        donors[b, :, y:y + side, x:x + side] = texture * 2 - 1
    return donors


def _median_ms(fn, repeats: int, progress) -> float:
    import time

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        progress.update(1)
    return 1000 * sorted(times)[len(times) // 2]


def run(args) -> dict:
    import torch
    from tqdm import tqdm

    from zxvad import synthesis as O
    from zxvad.bench import synthesis_reference as ref
    from zxvad.models import build_backbone

    for name in ("batch", "size", "T", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    B, S = args.batch, args.size
    clips = torch.rand(B, args.T + 1, 3, S, S, generator=g) * 2 - 1
    donors = _donors(B, S, g)
    R = build_backbone(args.backbone)
    features = R(donors)
    draws = torch.Generator().manual_seed(args.seed)
    frame_index, boxes = O.draw(B, args.T, S, S, draws, "cpu")
    targets = clips[torch.arange(B), frame_index]

    def batched_paste():
        return O.paste(targets, donors, O.masks_from_features(features, (S, S)), boxes)

    def loop_paste():
        for b in range(B):
            mask = ref.mask_from_features_reference(features[b], (S, S))
            ref.paste_reference(targets[b], donors[b], mask, boxes[b].tolist())

    def batched_total():
        return O.synthesize(clips, donors, R, generator=torch.Generator().manual_seed(args.seed))

    def loop_total():
        draws = torch.Generator().manual_seed(args.seed)
        return ref.synthesize_reference(clips, donors, R, generator=draws)

    print(f"O on the CPU ({torch.get_num_threads()} threads): batch {B}, {S}x{S}, T={args.T}, "
          f"R={args.backbone} ({tuple(features.shape[1:])} features), median of {args.repeats}")
    figures = {}
    progress = tqdm(total=4 * args.repeats, desc="timing", unit="run")
    with torch.inference_mode(), progress:
        figures["batched_paste_ms"] = _median_ms(batched_paste, args.repeats, progress)
        figures["loop_paste_ms"] = _median_ms(loop_paste, args.repeats, progress)
        figures["batched_total_ms"] = _median_ms(batched_total, args.repeats, progress)
        figures["loop_total_ms"] = _median_ms(loop_total, args.repeats, progress)
        result = batched_total()
    figures["paste_ratio"] = figures["loop_paste_ms"] / figures["batched_paste_ms"]
    figures["total_ratio"] = figures["loop_total_ms"] / figures["batched_total_ms"]
    figures["mask_area"] = result.mask_area
    print(f"  mask + paste : batched {figures['batched_paste_ms']:8.1f} ms   loop "
          f"{figures['loop_paste_ms']:8.1f} ms   ratio {figures['paste_ratio']:5.1f}x (goal >= 5)")
    print(f"  whole of O   : batched {figures['batched_total_ms']:8.1f} ms   loop "
          f"{figures['loop_total_ms']:8.1f} ms   ratio {figures['total_ratio']:5.1f}x "
          "(goal >= 1.5)")
    print(f"  mask area M  : {figures['mask_area']:.3f} of the donor frame; "
          f"pasted M~ covers {float(result.mask.mean()):.3f} of the target")
    return {key: round(value, 3) for key, value in figures.items()}
