"""A large synthetic corpus in the real Jester layout, for scale drills of the whole chain.

``20bn-jester-v1/<id>/00001.jpg ...`` (tiny JPEG frames, 12-40 per video as in Jester) plus
``jester-v1-train.csv`` and ``jester-v1-validation.csv`` (``id;label``), readable by
``python -m shards.build jester``. Each video is a square of one of a few gesture classes moving
over a noisy background; ids are numbers from 1 like Jester's. Deterministic: the same
``--videos``, ``--seed`` and ``--size`` give the same bytes.

    python -m shards.demo jester-like --videos 20000 --out /tmp/jester-20k [--size 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CLASSES = ("Swiping Left", "Swiping Right", "Sliding Two Fingers Up", "Thumb Up", "Stop Sign")
MOTIONS = ((-1, 0), (1, 0), (0, -1), (0, 0), (0, 0))  # per class: direction of the square
FRAMES = (12, 40)  # Jester's videos hold 12 to 70 frames, mostly about 36
VALIDATION_EVERY = 8  # Jester: 118,562 train / 14,787 validation videos, about one in nine
FRAMES_DIR = "20bn-jester-v1"


def video_frames(video_id: int, size: int, seed: int, frames: tuple[int, int] = FRAMES) -> tuple[str, list[bytes]]:
    """The class and the JPEG bytes of each frame of one video."""
    rng = np.random.default_rng([seed, video_id])
    label = int(rng.integers(len(CLASSES)))
    count = int(rng.integers(frames[0], frames[1] + 1))
    background = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    side = max(2, size // 4)
    x, y = (int(v) for v in rng.integers(0, size - side, size=2))
    dx, dy = MOTIONS[label]
    images = []
    for t in range(count):
        frame = background.copy()
        px, py = (x + dx * t) % (size - side), (y + dy * t) % (size - side)
        frame[py:py + side, px:px + side] = colour
        if label == 3:  # "thumb up" blinks, so a still square still changes
            frame[py:py + side, px:px + side] >>= t % 2
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return CLASSES[label], images


def write_jester_like(out: Path, videos: int, *, size: int = 32, seed: int = 0, frames: tuple[int, int] = FRAMES,
                      overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write ``videos`` videos of ``frames`` (min, max) frames under ``out``; return the list sizes and frames."""
    if videos < 1:
        raise ValueError(f"--videos {videos}: expected at least 1")
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"--frames {frames[0]}-{frames[1]}: expected MIN-MAX with 1 <= MIN <= MAX")
    if size < 8 or size % 2:
        raise ValueError(f"--size {size}: expected an even number >= 8")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} is not empty (choose another --out or pass --overwrite)")
        shutil.rmtree(out)
    frames_root = out / FRAMES_DIR
    frames_root.mkdir(parents=True)
    train, validation, total = [], [], 0
    for video_id in tqdm(range(1, videos + 1), desc="jester-like", unit="video", disable=not progress,
                         dynamic_ncols=True, mininterval=1.0):
        label, images = video_frames(video_id, size, seed, frames)
        folder = frames_root / str(video_id)
        os.mkdir(folder)
        for t, data in enumerate(images, 1):
            with open(folder / f"{t:05d}.jpg", "wb") as f:
                f.write(data)
        total += len(images)
        (validation if video_id % VALIDATION_EVERY == 0 else train).append(f"{video_id};{label}\n")
    (out / "jester-v1-train.csv").write_text("".join(train))
    (out / "jester-v1-validation.csv").write_text("".join(validation))
    (out / "jester-v1-labels.csv").write_text("".join(c + "\n" for c in CLASSES))
    return {"train": len(train), "validation": len(validation), "frames": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.demo jester-like", description=(
        "Write a synthetic corpus in the real Jester layout (20bn-jester-v1/<id>/00001.jpg and the "
        "id;label CSV lists), tiny frames, deterministic: a fixture for scale drills."))
    parser.add_argument("--videos", type=int, required=True, help="number of videos (about 1 in 8 go to validation)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    parser.add_argument("--size", type=int, default=32, help="square frame size in pixels (default 32)")
    parser.add_argument("--frames", default=f"{FRAMES[0]}-{FRAMES[1]}", metavar="MIN-MAX",
                        help=f"frames per video, drawn uniformly (default {FRAMES[0]}-{FRAMES[1]})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        low, _, high = args.frames.partition("-")
        try:
            frames = (int(low), int(high or low))
        except ValueError:
            raise ValueError(f"--frames {args.frames!r}: expected MIN-MAX, e.g. 12-40") from None
        counts = write_jester_like(args.out, args.videos, size=args.size, seed=args.seed, frames=frames,
                                   overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {counts['train']} train + {counts['validation']} validation videos, "
          f"{counts['frames']} frames of {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
