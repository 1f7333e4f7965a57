"""Training loaders before and after decoding only what a batch uses, in one run.

Each way of loading runs on ``--ranks`` processes at once (rank r of r ranks, as the DDP workers
read), one after another in the same run, on the same shards:

- ``before``: every frame of each stored clip decoded for one window (the earlier loader);
- ``one window``: the decoder stops after the window's last frame;
- ``shared``: the clip decoded once and ``--windows`` windows cut from it (0: as many disjoint
  ones as fit), mixed across batches;
- and the same for O's donor frames (``donors before`` / ``donors after``).

Prints clips/s (all ranks together), frames decoded per delivered clip, CPU ms per clip (the
rank processes' CPU time over the timed batches) and distinct source clips per batch, then the
ratios against ``before``. ``--pyav`` adds the older baseline: PyAV decoding in a torch
DataLoader with as many worker processes as DALI threads.

    python -m zxvad.bench loader --shards /tmp/realshards --size 64x64 --ranks 2 --workers 1
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
    parser.add_argument("--ranks", type=int, default=2, help="loader processes at once, one per rank (default 2)")
    parser.add_argument("--windows", type=int, default=0,
                        help="windows per decoded clip for 'shared' (default 0: as many as fit)")
    parser.add_argument("--pyav", action="store_true", help="also time the PyAV DataLoader baseline")


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


MODES = {  # name: (loader, keyword arguments)
    "before": ("clips", dict(window_decode=False)),
    "one window": ("clips", dict(windows_per_clip=1)),
    "shared": ("clips", dict()),  # windows_per_clip from --windows
    "donors before": ("donors", dict(window_decode=False)),
    "donors after": ("donors", dict()),
}


def _rank_rate(spec: str, fraction: float, mode: str, rank: int, ranks: int, opts: dict) -> dict:
    """One rank of one mode: clips/s, decoding and CPU over ``opts["batches"]`` timed batches."""
    import torch

    from zxvad.data import ClipLoader, DonorLoader, resolve_shards

    torch.set_num_threads(1)
    kind, extra = MODES[mode]
    common = dict(batch_size=opts["batch_size"], size=opts["size"], shard_id=rank, num_shards=ranks,
                  device=opts["device"], threads=opts["workers"], shuffle_buffer=64, seed=11)
    windows = opts["windows"]
    if kind == "clips":
        extra = {"windows_per_clip": windows, **extra} if mode == "shared" else extra
        loader = ClipLoader(resolve_shards(spec, fraction), clip_len=opts["clip_len"], **common, **extra)
    else:
        if mode == "donors after":  # as the training driver does: the clips' window count
            probe = ClipLoader(resolve_shards(spec, fraction), clip_len=opts["clip_len"], windows_per_clip=windows,
                               **{**common, "threads": 1})
            extra = {"windows_per_clip": probe.windows_per_clip}
            del probe
        loader = DonorLoader(resolve_shards(spec, fraction), **common, **extra)
    it = iter(loader)
    for _ in range(opts["warmup"]):
        next(it)
    decoded, clips = loader.frames_decoded, loader.clips_decoded
    delivered, distinct = loader.items_delivered, loader.distinct_clips
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(opts["batches"]):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    items = loader.items_delivered - delivered
    # every window cut is delivered in time (a pool holds the next ones): decoding per window cut
    cut = (loader.clips_decoded - clips) * loader.windows_per_clip
    return {"items": items, "wall_s": wall, "cpu_s": cpu, "frames_decoded": loader.frames_decoded - decoded, "cut": cut,
            "distinct": loader.distinct_clips - distinct, "windows_per_clip": loader.windows_per_clip,
            "quality": loader.quality, "decoder": loader.decoder}


def _measure(args, mode: str) -> dict:
    """``mode`` on all ranks at once (spawned processes: each its own DALI and torch)."""
    import multiprocessing

    opts = dict(batch_size=args.batch_size, size=tuple(args.size), device=args.device, workers=args.workers,
                windows=args.windows, clip_len=args.clip_len, warmup=args.warmup, batches=args.batches)
    with multiprocessing.get_context("spawn").Pool(args.ranks) as pool:
        ranks = pool.starmap(_rank_rate, [(args.shards, args.fraction, mode, r, args.ranks, opts)
                                          for r in range(args.ranks)])
    items = sum(r["items"] for r in ranks)
    return {
        "clips_per_s": round(sum(r["items"] / r["wall_s"] for r in ranks), 1),
        "frames_decoded_per_clip": round(sum(r["frames_decoded"] for r in ranks) / sum(r["cut"] for r in ranks), 2),
        "cpu_ms_per_clip": round(1000 * sum(r["cpu_s"] for r in ranks) / items, 2),
        "distinct_clips_per_batch": round(sum(r["distinct"] for r in ranks) / (args.batches * args.ranks), 2),
        "windows_per_clip": ranks[0]["windows_per_clip"],
        "quality": ranks[0]["quality"], "decoder": ranks[0]["decoder"],
    }


def run(args: argparse.Namespace) -> dict:
    from zxvad.data import resolve_shards

    if min(args.clip_len, args.batch_size, args.workers, args.batches, args.ranks) < 1 or args.windows < 0:
        raise ValueError("--clip-len, --batch-size, --workers, --batches and --ranks must be >= 1, --windows >= 0")
    shards = resolve_shards(args.shards, args.fraction)
    print(f"{len(shards)} shards; {args.ranks} ranks at once, each batch {args.batch_size} x {args.clip_len} "
          f"frames at {args.size[0]}x{args.size[1]}, {args.workers} DALI thread(s) per loader", file=sys.stderr)
    figures: dict = {}
    for mode in MODES:
        figures[mode] = _measure(args, mode)
        f = figures[mode]
        print(f"{mode:>14}: {f['clips_per_s']:8.1f} clips/s  {f['frames_decoded_per_clip']:5.2f} frames decoded a clip  "
              f"{f['cpu_ms_per_clip']:6.2f} CPU ms a clip  {f['distinct_clips_per_batch']:4.2f} clips a batch "
              f"({f['windows_per_clip']} window(s) a decoded clip)", file=sys.stderr)
    base, donors = figures["before"], figures["donors before"]
    for mode in MODES:
        ref = donors if mode.startswith("donors") else base
        figures[mode]["speedup"] = round(figures[mode]["clips_per_s"] / ref["clips_per_s"], 2)
        figures[mode]["cpu_ratio"] = round(figures[mode]["cpu_ms_per_clip"] / ref["cpu_ms_per_clip"], 3)
    print("against before: " + ", ".join(f"{m} x{figures[m]['speedup']:.2f} clips/s" for m in MODES
                                         if m not in ("before", "donors before")), file=sys.stderr)
    if args.pyav:
        figures["pyav"] = _pyav(args, shards)
    return figures


def _pyav(args, shards) -> dict:
    """The PyAV DataLoader baseline (one process, ``--workers`` DataLoader workers)."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)  # the baseline's resize must not borrow cores from its workers
    baseline = DataLoader(_baseline_dataset(shards, args.clip_len, args.size, seed=0),
                          batch_size=args.batch_size, num_workers=args.workers, prefetch_factor=2,
                          persistent_workers=False)
    rate = _time(baseline, args.batches, args.warmup, "PyAV DataLoader")
    del baseline  # ends the workers, so that their peak reaches RUSAGE_CHILDREN
    return {"clips_per_s": round(rate, 2), "worker_peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1)}
