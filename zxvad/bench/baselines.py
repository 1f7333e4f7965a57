"""The trivial predictors on labelled test shards, under every protocol of ``zxvad.scoring``.

Frames are read back through ``zxvad.data.EvalLoader``, as evaluation sees them, so the figures
are the floor that G's AUC on the same shards is read against. One row per predictor
(copy_last, mean_T, linear), one column per protocol (pooled per-video min-max, pooled raw,
macro), AUC in %; a target set per ``NAME=SHARDS``.

    python -m zxvad.bench baselines --target ped2=demo-out/shards/ped2
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", action="append", required=True, metavar="NAME=SHARDS",
                        help="a labelled test shard set (repeatable)")
    parser.add_argument("--T", type=int, default=4, help="the predictors' input frames (default 4)")


def target_results(shards: str, T: int) -> tuple[dict[str, list], int]:
    """Per predictor, one ``scoring.VideoResult`` per video of the shard set; and the frame size."""
    import torch

    from zxvad import scoring
    from zxvad.data import EvalClip, EvalLoader
    from zxvad.data.shardset import load_manifest, resolve_shards
    from zxvad.data.windows import prediction_windows

    manifest, _ = load_manifest(shards)
    size = tuple(manifest["options"]["size"])
    frames: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for clip in EvalLoader(resolve_shards(shards), size=size, threads=1, batch_size=4):
        if clip.video_id not in frames:
            frames[clip.video_id] = torch.full((clip.video_frames, *clip.frames.shape[1:]), float("nan"))
            labels[clip.video_id] = torch.zeros(clip.video_frames, dtype=torch.uint8)
        span = slice(clip.first_frame, clip.first_frame + len(clip.frames))
        frames[clip.video_id][span], labels[clip.video_id][span] = clip.frames, clip.labels
    results: dict[str, list] = {name: [] for name in scoring.BASELINES}
    for video_id, x in frames.items():
        if torch.isnan(x).any():
            raise ValueError(f"{shards}: video {video_id} has frames no clip holds")
        windows, _, _ = prediction_windows(EvalClip(video_id, 0, x, labels[video_id], len(x), True), T)
        predictions = scoring.baseline_predictions(windows[:, :T])
        for name in scoring.BASELINES:
            psnr = scoring.psnr(predictions[name], windows[:, T]).numpy()
            results[name].append(scoring.VideoResult(video_id, psnr, labels[video_id].numpy()))
    return results, size


def table(name: str, size, aucs: dict[str, dict[str, float]], videos: int) -> str:
    from zxvad.scoring import PROTOCOLS

    lines = [f"{name} ({videos} videos, {size[0]}x{size[1]}): AUC %",
             "| predictor | " + " | ".join(PROTOCOLS) + " |", "|---|" + "---|" * len(PROTOCOLS)]
    for predictor, row in aucs.items():
        lines.append(f"| {predictor} | " + " | ".join(f"{100 * row[p]:.2f}" for p in PROTOCOLS) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    import torch

    from zxvad import scoring

    torch.set_num_threads(1)
    out = {}
    for spec in args.target:
        name, sep, shards = spec.partition("=")
        if not sep or not name or not shards:
            raise ValueError(f"--target {spec!r}: expected NAME=SHARDS")
        results, size = target_results(shards, args.T)
        aucs = {b: {p: scoring.protocol_auc(r, args.T, p) for p in scoring.PROTOCOLS}
                for b, r in results.items()}
        print(table(name, size, aucs, len(results[scoring.BASELINES[0]])))
        out[name] = {"size": list(size), "auc": aucs}
    return out
