"""Clean training windows: no repeated frames, no scene cuts.

Future-frame prediction learns motion from consecutive frames. Real TI footage holds repeated
frames (frame-rate conversion) and scene cuts; a window holding either teaches G that the next
frame is a copy between moving ones, or an unrelated picture. ``transition_psnr`` measures each
step between consecutive frames, ``step_kind`` judges one, ``clean_starts`` marks the window
starts whose every step is fine, and ``clean_frames`` drops repeated frames and marks cuts in a
stream of frames, as ``shards.build --clean-windows`` does.

The thresholds are measured (``python -m shards.windows``; docs/ped2-and-clean-windows.md): at
64x64 and 128x128, every step of Ped2's 16 training videos lies in 32.5-45.9 dB; the cuts in
the real clips lie at 7.9-12.4 dB and their fastest real motion at 13.4 dB. A repeated frame of
lossy, frame-rate-converted TI footage reads 50-63 dB, inside the range of real slow motion
(NTU-like clip: 43-61 dB), but 17 dB or more above the smaller step beside it, where real motion
never rose more than 10.2 dB. A still shot (a run of equal steps, however high) is kept: where
nothing moves, the next frame is the last one.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator

import numpy as np

CUT_DB = 13.0  # below: a scene cut
SPIKE_DB = 14.0  # this far above the smaller neighbouring step: a frame repeated between moving ones


def transition_psnr(frames: np.ndarray) -> np.ndarray:
    """PSNR in dB between each pair of consecutive frames (uint8, (N, H, W[, C])); (N-1,).

    Identical frames read 100 dB (the cap of :mod:`zxvad.scoring`).
    """
    f = np.asarray(frames)
    if f.ndim < 3 or len(f) < 2:
        return np.zeros(0)
    a = f[1:].astype(np.float32) / 255.0
    b = f[:-1].astype(np.float32) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def clean_starts(step_psnr: np.ndarray, window: int, low: float = CUT_DB,
                 spike: float = SPIKE_DB) -> np.ndarray:
    """Bool mask over window starts 0..N-window: True where no step of the window is a repeat
    or a cut (:func:`step_kind`).

    Args:
        step_psnr: (N-1,) from :func:`transition_psnr`.
        window: frames per window (T + 1).
    """
    if window < 1:
        raise ValueError(f"clean_starts: window {window} must be at least 1")
    n = len(step_psnr) + 1
    if n < window:
        return np.zeros(0, dtype=bool)
    if window == 1:
        return np.ones(n, dtype=bool)
    bad = np.array([step_kind(step_psnr, j, low, spike) != OK for j in range(n - 1)], dtype=bool)
    counts = np.concatenate([[0], np.cumsum(bad)])
    return (counts[window - 1:] - counts[:n - window + 1]) == 0


OK, DUPLICATE, CUT = 0, 1, 2


def step_kind(steps, j: int, low: float = CUT_DB, spike: float = SPIKE_DB) -> int:
    """:data:`OK`, :data:`DUPLICATE` or :data:`CUT` for step ``j`` of ``steps`` (dB).

    A cut lies below ``low``; a repeat lies more than ``spike`` above the smaller of its
    neighbouring steps that are not cuts (a stutter: the frames around it move).
    """
    p = steps[j]
    if p < low:
        return CUT
    beside = [steps[k] for k in (j - 1, j + 1) if 0 <= k < len(steps) and steps[k] >= low]
    return DUPLICATE if beside and p - min(beside) > spike else OK


def clean_frames(frames: Iterable[Any], rgb: Callable[[Any], np.ndarray], low: float = CUT_DB,
                 spike: float = SPIKE_DB,
                 counts: dict[str, int] | None = None) -> Iterator[tuple[int, Any, bool]]:
    """``(index, frame, starts_segment)`` for every frame a clean clip may hold, streamed.

    A frame that repeats the one before it is left out (the motion around it stays
    continuous); the frame after a cut starts a new segment, which no clip may span. Each
    step is judged once the step after it is known, so one frame is held back.

    Args:
        frames: the video's frames, in order, in any form ``rgb`` turns into (H, W, 3) uint8.
        counts: if given, ``"duplicates"`` and ``"cuts"`` are added to it.
    """
    steps: list[float] = []
    held: deque = deque()  # (index, frame) whose step from the frame before is not judged yet
    previous = None
    tally = {"duplicates": 0, "cuts": 0}

    def judge(j: int) -> tuple[int, Any, bool] | None:
        index, frame = held.popleft()
        kind = step_kind(steps, j, low, spike)
        if kind == DUPLICATE:
            tally["duplicates"] += 1
            return None
        tally["cuts"] += kind == CUT
        return index, frame, kind == CUT

    try:
        for index, frame in enumerate(frames):
            image = rgb(frame)
            if previous is None:
                yield index, frame, True
            else:
                steps.append(float(transition_psnr(np.stack([previous, image]))[0]))
                held.append((index, frame))
                if len(steps) >= 2 and (out := judge(len(steps) - 2)) is not None:
                    yield out
            previous = image
        if held and (out := judge(len(steps) - 1)) is not None:
            yield out
    finally:
        if counts is not None:
            for key, value in tally.items():
                counts[key] = counts.get(key, 0) + value


# ------------------------------------------------------------------ measurement (CLI)

HISTOGRAM_EDGES = (0, 10, 13, 16, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 80, 99.99, 101)


def stored_frames(video, size: tuple[int, int]) -> np.ndarray:
    """A video's frames as a lossless shard stores them (one AREA resize, YUV 4:2:0, DALI's RGB)."""
    from shards import readers
    from shards.encode import resize_frame, to_rgb

    return np.stack([to_rgb(resize_frame(rgb, size, "vp9")) for rgb in readers.read_frames(video)])


def measure(dataset: str, root, split: str, sizes: list[tuple[int, int]]) -> list[dict]:
    """Per video and size: every consecutive-frame PSNR of the frames a shard would store."""
    from shards import readers

    rows = []
    for video in readers.list_videos(dataset, root, split):
        for size in sizes:
            rows.append({"video": video.video_id, "size": list(size),
                         "psnr": transition_psnr(stored_frames(video, size)).round(2).tolist()})
    return rows


def report(rows: list[dict]) -> str:
    """Markdown: per video and size, the steps' range and kinds (:func:`step_kind`), the largest
    rise of a step above its smaller neighbour; then a histogram of all steps per size."""
    lines = ["| video | size | steps | min dB | median dB | max dB | cuts | repeats | largest rise of a kept step dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = np.asarray(r["psnr"])
        if not len(p):
            continue
        kinds = np.array([step_kind(p, j) for j in range(len(p))])
        rises = [p[j] - min(b) for j in range(len(p)) if kinds[j] == OK
                 and (b := [p[k] for k in (j - 1, j + 1) if 0 <= k < len(p) and p[k] >= CUT_DB])]
        lines.append(f"| {r['video']} | {r['size'][0]}x{r['size'][1]} | {len(p)} | {p.min():.1f} | "
                     f"{np.median(p):.1f} | {p.max():.1f} | {int((kinds == CUT).sum())} | "
                     f"{int((kinds == DUPLICATE).sum())} | {max(rises, default=0.0):.1f} |")
    edges = np.asarray(HISTOGRAM_EDGES, dtype=float)
    sizes = sorted({tuple(r["size"]) for r in rows})
    lines += ["", "| dB | " + " | ".join(f"{h}x{w}" for h, w in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    counts = [np.histogram(np.concatenate([r["psnr"] for r in rows if tuple(r["size"]) == s] or [[]]),
                           edges)[0] for s in sizes]
    for i in range(len(edges) - 1):
        label = "100 (identical)" if edges[i] >= 99.99 else f"{edges[i]:g}-{edges[i + 1]:g}"
        lines.append(f"| {label} | " + " | ".join(str(c[i]) for c in counts) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from shards.readers import ReaderError

    p = argparse.ArgumentParser(prog="python -m shards.windows", description=(
        "Consecutive-frame PSNR of a dataset's videos at the sizes shards store them: the "
        "measurement behind the clean-window thresholds."))
    p.add_argument("dataset", help="a shards.readers dataset name (videofolder, ped2, ...)")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--sizes", default="64x64,128x128", help="comma-separated HxW")
    p.add_argument("--json", default=None, help="also write every transition's PSNR here")
    args = p.parse_args(argv)
    try:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
        if any(len(size) != 2 or min(size) < 2 or any(x % 2 for x in size) for size in sizes):
            raise ValueError
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: expected HxW[,HxW...] with even numbers, e.g. 64x64,128x128",
              file=sys.stderr)
        return 2
    try:
        rows = measure(args.dataset, args.root, args.split, sizes)
    except ReaderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
