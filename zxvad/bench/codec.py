"""How each codec and quality stores a dataset, measured where it matters: through DALI's loader.

For each setting (codec, quality) the dataset is sharded as a test set by ``shards.build`` and read
back through ``zxvad.data.EvalLoader``, which is how evaluation sees frames. Per setting:

- stored bytes per frame (the clips' video entries) and encoder frames/s (``shards.build``'s clock);
- DALI decode frames/s (EvalLoader, one thread, at the stored size);
- PSNR of the decoded frames to the source frames after the same resize and YUV conversion (the
  encoder's input, converted to RGB exactly as DALI's CPU decoder converts; ``shards.fidelity``),
  and the mean change in consecutive-frame PSNR;
- with per-frame labels (a demo target, or a videofolder with ``<video>.npy``): the frame AUC of
  the copy_last and mean_T predictors (``zxvad.scoring``) on the stored frames and on the source.

    python -m zxvad.bench codec --root demo-out/raw/target-street --size 64x64
    python -m zxvad.bench codec --root ../shared/data/real-clips --size 64x64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("vp9:lossless", "vp9:high", "vp9:compact", "mjpeg:high", "mjpeg:compact")
PREDICTORS = ("copy_last", "mean_T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="a dataset folder (a demo domain, a videofolder, ...)")
    parser.add_argument("--dataset", default=None,
                        help="reader name (default: demo when the folder holds domain.json or demo.json, "
                             "else videofolder)")
    parser.add_argument("--size", default="64x64", help="stored frame size HxW (default 64x64)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated codec:quality (default {','.join(SETTINGS)})")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--T", type=int, default=4, help="T, the predictors' input frames (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")


def _parse_settings(text: str) -> list[tuple[str, str]]:
    from shards.encode import check_quality

    settings = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        codec, sep, quality = item.partition(":")
        if not sep:
            raise ValueError(f"--settings {item!r}: expected codec:quality, e.g. vp9:lossless")
        check_quality(codec, quality)
        settings.append((codec, quality))
    if not settings:
        raise ValueError("--settings: name at least one codec:quality")
    return settings


def _dataset(root: Path, name: str | None) -> str:
    if name:
        return name
    return "demo" if (root / "domain.json").is_file() or (root / "demo.json").is_file() else "videofolder"


def reference_frames(videos: list, size: tuple[int, int], codec: str) -> dict[str, "torch.Tensor"]:
    """Each video's frames as the encoder receives them, in RGB as DALI converts them: (N, 3, H, W) uint8."""
    import numpy as np
    import torch

    from shards import readers
    from shards.encode import resize_frame, to_rgb

    out = {}
    for video in videos:
        frames = [to_rgb(resize_frame(rgb, size, codec)) for rgb in readers.read_frames(video)]
        out[video.video_id] = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    return out


def _as_float(frames):
    return frames.float() / 127.5 - 1


def decoded_frames(shards: list[str], size: tuple[int, int]) -> tuple[dict, float]:
    """Every video's frames read back through EvalLoader ((N, 3, H, W) in [-1, 1]), and frames/s."""
    import torch

    from zxvad.data import EvalLoader

    videos: dict[str, torch.Tensor] = {}
    decoded, began = 0, time.perf_counter()
    for clip in EvalLoader(shards, size=size, threads=1, batch_size=4):
        if clip.video_id not in videos:
            videos[clip.video_id] = torch.full((clip.video_frames, *clip.frames.shape[1:]), float("nan"))
        videos[clip.video_id][clip.first_frame:clip.first_frame + len(clip.frames)] = clip.frames
        decoded += len(clip.frames)
    return videos, decoded / (time.perf_counter() - began)


def predictor_aucs(videos: dict, labels: dict, T: int) -> dict[str, float]:
    """Frame AUC of each trivial predictor over all videos (``zxvad.scoring``'s protocol)."""
    import torch

    from zxvad import scoring
    from zxvad.data.pipelines import EvalClip
    from zxvad.data.windows import prediction_windows

    psnrs: dict[str, list] = {name: [] for name in PREDICTORS}
    for video_id, x in videos.items():
        y = torch.as_tensor(labels[video_id], dtype=torch.uint8)
        windows, _, _ = prediction_windows(EvalClip(video_id, 0, x, y, len(x), True), T)
        predictions = scoring.baseline_predictions(windows[:, :T])
        for name in PREDICTORS:
            value = scoring.psnr(predictions[name], windows[:, T]).numpy()
            psnrs[name].append(scoring.VideoResult(video_id, value, y.numpy()))
    return {name: scoring.frame_auc(results, T) for name, results in psnrs.items()}


def _video_bytes(shards: list[str]) -> int:
    from shards.format import VIDEO_EXT, index_name
    from zxvad.data.shardset import parse_index, read_bytes

    total = 0
    for shard in shards:
        index = index_name(shard)
        total += sum(sample[VIDEO_EXT][1] for sample in parse_index(read_bytes(index).decode(), index))
    return total


def measure_setting(root: Path, dataset: str, codec: str, quality: str, args, references: dict,
                    labels: dict | None, work: Path) -> dict:
    """One row of the table: shard the dataset this way, read it back through DALI, compare."""
    from shards.build import build
    from shards.fidelity import Fidelity, measure_frames
    from zxvad.data import resolve_shards

    out = work / f"{codec}-{quality}"
    manifest = build(dataset, root, out, split="test", clip_len=args.clip_len, overlap=args.T,
                     size=args.size, codec=codec, quality=quality, fidelity_sample=0.0,
                     workers=args.workers, progress=False)
    shards = resolve_shards(str(out))
    decoded, decode_fps = decoded_frames(shards, args.size)
    fidelity = Fidelity()
    for video_id, frames in decoded.items():
        fidelity = fidelity.add(measure_frames(_as_float(references[video_id]), frames))
    report = fidelity.report(1.0)
    stored = manifest["totals"]["frames"]
    row = {"setting": f"{codec}:{quality}", "bytes_per_frame": round(_video_bytes(shards) / stored, 1),
           "encode_fps": round(stored / max(manifest["run"]["encode_seconds"], 1e-9), 1),
           "decode_fps": round(decode_fps, 1), "psnr_to_source_db": report["psnr_db_mean"],
           "consecutive_psnr_change_db": report["consecutive_psnr_change_db_mean"]}
    if labels is not None:
        row.update({f"auc_{k}": round(100 * v, 2) for k, v in predictor_aucs(decoded, labels, args.T).items()})
    return row


def table(rows: list[dict], source: dict[str, dict], labelled: bool) -> str:
    """A markdown table of the rows; AUCs as 'stored (source)'."""
    head = ["setting", "bytes/frame", "encode fps", "DALI decode fps", "PSNR to source dB", "Δ consecutive PSNR dB"]
    head += [f"{p} AUC % stored (source)" for p in PREDICTORS] if labelled else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"], f"{r['bytes_per_frame']:.0f}", f"{r['encode_fps']:.0f}", f"{r['decode_fps']:.0f}",
                 f"{r['psnr_to_source_db']:.2f}", f"{r['consecutive_psnr_change_db']:.3f}"]
        if labelled:
            src = source[r["setting"].split(":")[0]]
            cells += [f"{r[f'auc_{p}']:.2f} ({src[p]:.2f})" for p in PREDICTORS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from shards import readers
    from shards.build import parse_size

    torch.set_num_threads(1)  # small tensors; a shared CPU is faster on one thread
    args.size = parse_size(args.size)
    settings = _parse_settings(args.settings)
    if args.T < 1 or args.clip_len <= args.T:
        raise ValueError(f"--T {args.T}, --clip-len {args.clip_len}: expected 1 <= T < clip-len")
    root = Path(args.root)
    dataset = _dataset(root, args.dataset)
    videos = readers.list_videos(dataset, root, "test")
    labelled = all(v.labels is not None for v in videos)
    labels = {v.video_id: v.labels for v in videos} if labelled else None
    rows, source = [], {}
    with tempfile.TemporaryDirectory(prefix="zxvad-codec-") as tmp:
        bar = tqdm(settings, desc="codec settings", unit="setting", file=sys.stderr)
        references: dict[str, dict] = {}
        for codec, quality in bar:
            bar.set_postfix(setting=f"{codec}:{quality}")
            if codec not in references:
                references[codec] = reference_frames(videos, args.size, codec)
                if labelled:
                    floats = {k: _as_float(v) for k, v in references[codec].items()}
                    source[codec] = {k: round(100 * v, 2) for k, v in predictor_aucs(floats, labels, args.T).items()}
            rows.append(measure_setting(root, dataset, codec, quality, args, references[codec], labels, Path(tmp)))
    print(f"{dataset} {root}: {len(videos)} videos at {args.size[0]}x{args.size[1]}, "
          f"{'labelled' if labelled else 'no labels (no AUC)'}; source = encoder input in DALI's RGB")
    print(table(rows, source, labelled))
    return {"dataset": dataset, "root": str(root), "size": list(args.size), "rows": rows, "source_auc": source}
