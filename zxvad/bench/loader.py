"""The DALI clip pipeline against the usual baseline: PyAV decoding in a torch DataLoader.

Both read the same shards with the same number of workers (DALI threads, DataLoader worker
processes) and produce the same tensors, ``(B, T+1, 3, H, W)`` float in [-1, 1] with T+1
consecutive frames at a random start, resized to HxW. Prints clips/s of each, their ratio and
the process's peak RSS.

    python -m zxvad.bench loader --shards /tmp/realshards --size 64x64 --workers 2
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import tarfile
import time

from zxvad.resources import peak_rss_mb


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW, e.g. 64x64")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="shard folder, s3://prefix or manifest.json")
    parser.add_argument("--size", type=_size, default=(64, 64), help="output HxW (default 64x64)")
    parser.add_argument("--clip-len", type=int, default=5, help="T+1 frames per clip (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DALI threads and DataLoader worker processes (default 2)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--fraction", type=float, default=1.0, help="stable shard prefix (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")


def _time(loader, batches: int, warmup: int, what: str) -> float:
    """Clips per second over ``batches`` batches after ``warmup`` untimed ones."""
    from tqdm import tqdm

    it = iter(loader)
    for _ in range(warmup):
        next(it)
    clips, start = 0, time.perf_counter()
    for _ in tqdm(range(batches), desc=what, unit="batch", file=sys.stderr):
        clips += len(next(it))
    return clips / (time.perf_counter() - start)


def _baseline_dataset(shards, clip_len: int, size, seed: int):
    """A torch IterableDataset: tar -> PyAV decode -> random T+1 window -> resize -> [-1, 1]."""
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import IterableDataset, get_worker_info

    from shards.format import VIDEO_EXT
    from zxvad.data.shardset import read_bytes

    class PyAVClips(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            rng = random.Random(seed + worker)
            mine = shards[worker::workers] or shards  # the usual split: shards over workers
            while True:
                for path in rng.sample(mine, len(mine)):
                    local = not path.startswith("s3://")
                    with tarfile.open(path if local else None, fileobj=None if local else io.BytesIO(read_bytes(path))) as tar:
                        for member in tar:
                            if member.name.endswith("." + VIDEO_EXT):
                                yield self.clip(tar.extractfile(member).read(), rng)

        def clip(self, data: bytes, rng: random.Random) -> torch.Tensor:
            with av.open(io.BytesIO(data)) as container:
                video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            start = rng.randrange(len(video) - clip_len + 1)
            x = torch.from_numpy(video[start:start + clip_len]).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            return x / 127.5 - 1

    return PyAVClips()


def run(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from zxvad.data import ClipLoader, resolve_shards

    if args.clip_len < 1 or args.batch_size < 1 or args.workers < 1 or args.batches < 1:
        raise ValueError("--clip-len, --batch-size, --workers and --batches must be >= 1")
    torch.set_num_threads(1)  # the baseline's resize must not borrow cores from its workers
    shards = resolve_shards(args.shards, args.fraction)
    dali = ClipLoader(shards, batch_size=args.batch_size, clip_len=args.clip_len, size=args.size,
                      device=args.device, threads=args.workers, shuffle_buffer=64)
    print(f"{len(shards)} shards, {dali.part_size} clips; batch {args.batch_size} x {args.clip_len} frames "
          f"at {args.size[0]}x{args.size[1]}, {args.workers} workers, decoder {dali.decoder}, stored {dali.quality}",
          file=sys.stderr)
    dali_rate = _time(dali, args.batches, args.warmup, "DALI")
    dali_rss = peak_rss_mb()
    del dali

    baseline = DataLoader(_baseline_dataset(shards, args.clip_len, args.size, seed=0),
                          batch_size=args.batch_size, num_workers=args.workers, prefetch_factor=2,
                          persistent_workers=False)
    baseline_rate = _time(baseline, args.batches, args.warmup, "PyAV DataLoader")
    figures = {
        "dali_clips_per_s": round(dali_rate, 2),
        "baseline_clips_per_s": round(baseline_rate, 2),
        "ratio": round(dali_rate / baseline_rate, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "dali_peak_rss_mb": round(dali_rss, 1),
    }
    del baseline  # ends the workers, so that their peak reaches RUSAGE_CHILDREN
    figures["baseline_worker_peak_rss_mb"] = round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1)
    print(f"DALI {dali_rate:.1f} clips/s, PyAV DataLoader {baseline_rate:.1f} clips/s: "
          f"{figures['ratio']:.2f}x", file=sys.stderr)
    return figures
