"""Synthetic demo domains written in the real dataset layouts, so the demo exercises the real readers.

Three domains, each its own scene (palette, background texture, people's scale):

- ``source`` (``videofolder``): a TI-style action set, ``source/<class>/<n>.avi|.mkv`` (mpeg4 in AVI,
  MJPEG in Matroska), classes walk / wave / jump / crowd in an indoor room. Normal motion only.
- ``target-street`` (``ped2``): ``ped2/{training,testing}/frames/NN/000.jpg`` + ``ped2/ped2.mat``,
  a grey street with lane marks, small walkers.
- ``target-plaza`` (``avenue``): ``avenue/{training,testing}/frames/NN/0000.jpg`` + ``avenue/avenue.mat``,
  a blue-green brick plaza seen from closer (larger walkers).

Normal motion is slow upright walkers (0.5-1.5 px/frame at 64 px). The test videos of the targets
hold anomalies that a model trained elsewhere can still catch: fast cars and bikes (4-8 px/frame),
large trucks, and an unseen kind of object (a big bright box). A frame is labelled anomalous when at
least a fifth of an anomalous object is in view; the labels are the frame ranges in the ``.mat``.

- ``target-real`` (``ped2``, when a real clip is given): real footage of a fixed camera (default
  ``street_pedestrians_vtest.avi`` from ``../shared/data/real-clips``) cut into test videos whose
  anomalies are injected into real frames: speed-ups (every k-th frame kept, k of 3-5) and a textured
  region cut from another real clip (default ``street_bikes.mp4``) crossing the scene fast. Normal
  frames are the clip's own frames, only resized, stored losslessly (PNG); the labels mark exactly
  the injected frames; ``real.json`` records each output frame's source frame and every event.

Everything is deterministic by seed, byte for byte (bit-exact encoders, fixed .mat header).
``demo.json`` at the root and ``domain.json`` in each domain let ``list_videos("demo", ...)`` read them.

    python -m shards.demo --out demo-out/domains [--seed 0] [--size 64] [--real-source VIDEO]
    python -m shards.demo jester-like --videos N --out DIR   # a Jester-layout scale corpus (shards.jester_like)
"""

from __future__ import annotations

import argparse
import io
import json
import hashlib
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

SOURCE_CLASSES = ("walk", "wave", "jump", "crowd")
ANOMALY_KINDS = ("car", "truck", "box", "bike")
VISIBLE_FRACTION = 0.2  # an anomalous object counts once this much of it is in view
FPS = 25
REAL_CLIPS = Path(os.environ.get("ZXVAD_REAL_CLIPS",
                                 Path(__file__).resolve().parents[2] / "shared" / "data" / "real-clips"))
REAL_SOURCE, REAL_DONOR = "street_pedestrians_vtest.avi", "street_bikes.mp4"
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by zxvad shards.demo".ljust(116)


@dataclass(frozen=True)
class Scene:
    """What makes one domain look unlike the others."""

    name: str
    texture: str  # room | street | plaza
    base: tuple[int, int, int]  # main background colour
    accent: tuple[int, int, int]  # texture colour
    person_scale: float  # walker height relative to a 64-px frame's 11 px
    clothes: tuple[tuple[int, int, int], ...]


SCENES = {
    "source": Scene("source", "room", (196, 168, 128), (150, 112, 80), 1.25,
                    ((60, 70, 150), (40, 110, 60), (150, 40, 40), (30, 30, 30))),
    "target-street": Scene("target-street", "street", (96, 96, 102), (205, 205, 195), 1.0,
                           ((30, 30, 45), (60, 35, 25), (25, 50, 70), (80, 80, 85))),
    "target-plaza": Scene("target-plaza", "plaza", (70, 118, 128), (120, 165, 170), 1.45,
                          ((210, 200, 170), (40, 40, 40), (170, 90, 40), (90, 60, 120))),
}


# ----------------------------------------------------------------------------- drawing

def background(scene: Scene, size: int, seed: int) -> np.ndarray:
    """The static scene of a domain, float32 (H, W, 3)."""
    rng = np.random.default_rng([seed, sum(map(ord, scene.name))])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base, accent = np.array(scene.base, np.float32), np.array(scene.accent, np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if scene.texture == "room":  # wall with a light gradient over a checker floor
        img *= (1.1 - 0.25 * yy)[..., None]
        tile = max(4, size // 8)
        checker = ((np.arange(size)[:, None] // tile + np.arange(size)[None] // tile) % 2).astype(bool)
        floor = (yy > 0.62) & checker
        img[floor] = accent
        img[(yy > 0.62) & ~checker] = accent * 1.15
    elif scene.texture == "street":  # asphalt grain, a sidewalk, dashed lane marks
        img += rng.normal(0, 7, (size, size, 1)).astype(np.float32)
        img[yy < 0.22] = np.array(scene.base) * 1.5
        lane = (np.abs(yy - 0.6) < 0.015) & ((xx * 8) % 1 < 0.5)
        img[lane] = accent
    elif scene.texture == "plaza":  # running-bond bricks with light mortar
        bh, bw = max(3, size // 12), max(6, size // 6)
        rows = np.arange(size)[:, None] // bh
        cols = (np.arange(size)[None] + (rows % 2) * (bw // 2)) % bw
        mortar = (np.arange(size)[:, None] % bh == 0) | (cols == 0)
        img += rng.normal(0, 3, (size, size, 1)).astype(np.float32)
        img[mortar] = accent
    return np.clip(img, 0, 255)


def _paint_rect(img: np.ndarray, cy: float, cx: float, h: float, w: float, color) -> int:
    """Fill a centred rectangle; returns the number of pixels painted inside the frame."""
    y0, y1 = int(round(cy - h / 2)), int(round(cy + h / 2))
    x0, x1 = int(round(cx - w / 2)), int(round(cx + w / 2))
    y0, y1, x0, x1 = max(y0, 0), min(y1, img.shape[0]), max(x0, 0), min(x1, img.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    img[y0:y1, x0:x1] = color
    return (y1 - y0) * (x1 - x0)


def _paint_ellipse(img: np.ndarray, cy: float, cx: float, ry: float, rx: float, color) -> int:
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, img.shape[0])
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, img.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1
    img[y0:y1, x0:x1][inside] = color
    return int(inside.sum())


@dataclass
class Sprite:
    """A moving thing: a person (normal) or a vehicle / box (anomalous)."""

    kind: str  # person | car | truck | bike | box
    y: float
    x: float
    vy: float
    vx: float
    h: float
    w: float
    color: tuple[int, int, int]
    wave: float = 0.0  # person: arm amplitude
    jump: float = 0.0  # person: bounce height
    phase: float = 0.0
    start: int = 0  # first frame it exists (anomalies)
    stop: int = 1 << 30  # first frame it no longer exists (a box taken away, a vehicle gone)
    full_area: int = 0

    @property
    def anomalous(self) -> bool:
        return self.kind != "person"

    def position(self, t: int, size: int) -> tuple[float, float]:
        if self.anomalous:  # passes straight through the frame
            dt = t - self.start
            return self.y + self.vy * dt, self.x + self.vx * dt
        # walkers turn back at the borders (a triangle wave keeps them in the frame)
        lo_x, hi_x = self.w, size - self.w
        lo_y, hi_y = self.h * 0.8, size - self.h * 0.6
        y = _reflect(self.y + self.vy * t, lo_y, hi_y) - self.jump * abs(math.sin(0.35 * t + self.phase))
        return y, _reflect(self.x + self.vx * t, lo_x, hi_x)

    def draw(self, img: np.ndarray, t: int, size: int) -> int:
        """Paint at frame ``t``; returns pixels in view."""
        if not self.start <= t < self.stop:
            return 0
        y, x = self.position(t, size)
        c = self.color
        if self.kind == "person":
            step = math.sin(0.6 * t + self.phase) * self.w * 0.25
            n = _paint_rect(img, y + self.h * 0.3, x - step, self.h * 0.35, self.w * 0.3, c)
            n += _paint_rect(img, y + self.h * 0.3, x + step, self.h * 0.35, self.w * 0.3, c)
            n += _paint_ellipse(img, y - self.h * 0.05, x, self.h * 0.28, self.w * 0.5, c)
            n += _paint_ellipse(img, y - self.h * 0.42, x, self.w * 0.38, self.w * 0.38, (225, 190, 160))
            if self.wave:
                arm_y = y - self.h * 0.3 - self.wave * (0.5 + 0.5 * math.sin(0.5 * t + self.phase))
                n += _paint_rect(img, arm_y, x + self.w * 0.6, self.h * 0.35, max(1.0, self.w * 0.2), c)
            return n
        if self.kind == "box":  # an unseen kind: a bright block with a white rim
            n = _paint_rect(img, y, x, self.h, self.w, (255, 255, 255))
            _paint_rect(img, y, x, self.h * 0.7, self.w * 0.7, c)
            return n
        n = _paint_rect(img, y, x, self.h, self.w, c)  # car, truck, bike: a body with dark windows/wheels
        _paint_rect(img, y - self.h * 0.2, x, self.h * 0.3, self.w * 0.6, (20, 25, 35))
        _paint_rect(img, y + self.h * 0.45, x - self.w * 0.3, self.h * 0.2, self.h * 0.3, (10, 10, 10))
        _paint_rect(img, y + self.h * 0.45, x + self.w * 0.3, self.h * 0.2, self.h * 0.3, (10, 10, 10))
        return n


def _reflect(v: float, lo: float, hi: float) -> float:
    span = max(hi - lo, 1e-3)
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def _walker(rng: np.random.Generator, scene: Scene, size: int, *, still: bool = False) -> Sprite:
    s = size / 64 * scene.person_scale
    speed = 0.0 if still else rng.uniform(0.5, 1.5) * size / 64
    angle = rng.uniform(0, 2 * math.pi)
    ymin = 0.3 if scene.texture == "room" else 0.15
    return Sprite("person", rng.uniform(ymin, 0.85) * size, rng.uniform(0.1, 0.9) * size,
                  speed * math.sin(angle) * 0.4, speed * math.cos(angle), 11 * s, 5 * s,
                  scene.clothes[rng.integers(len(scene.clothes))], phase=rng.uniform(0, 6.3))


def _anomaly(rng: np.random.Generator, kind: str, size: int, start: int) -> Sprite:
    """An object that enters from one side at ``start`` and crosses the frame."""
    k = size / 64
    h, w, speed, color = {
        "car": (7, 14, rng.uniform(4, 8), (200, 30, 30)),
        "bike": (7, 7, rng.uniform(4, 6), (240, 200, 20)),
        "truck": (18, 30, rng.uniform(2.5, 3.5), (30, 60, 170)),
        "box": (16, 16, rng.uniform(0.5, 1.0), (255, 0, 220)),
    }[kind]
    h, w, speed = h * k, w * k, speed * k
    direction = 1 if rng.random() < 0.5 else -1
    x = -w / 2 if direction > 0 else size + w / 2
    if kind == "box":  # dropped into the scene, then taken away
        x = rng.uniform(0.25, 0.75) * size
    y = rng.uniform(0.35, 0.8) * size
    sprite = Sprite(kind, y, x, 0.0, direction * speed, h, w, color, start=start)
    sprite.full_area = int(round(h) * round(w))
    sprite.stop = start + (int(rng.integers(12, 20)) if kind == "box" else int((size + w) / speed) + 1)
    return sprite


# ----------------------------------------------------------------------------- videos

def render(scene: Scene, sprites: list[Sprite], num_frames: int, size: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, H, W, 3) uint8 and per-frame 0/1 labels (an anomaly at least partly in view)."""
    rng = np.random.default_rng(seed)
    bg = background(scene, size, 0)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    labels = np.zeros(num_frames, np.uint8)
    for t in range(num_frames):
        img = bg.copy()
        for sprite in sorted(sprites, key=lambda s: s.y):  # nearer (lower) things drawn last
            seen = sprite.draw(img, t, size)
            if sprite.anomalous and seen >= VISIBLE_FRACTION * sprite.full_area:
                labels[t] = 1
        img += rng.normal(0, 2.0, img.shape[:2] + (1,)).astype(np.float32)  # sensor noise
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, labels


def _source_video(rng, cls: str, scene: Scene, size: int) -> list[Sprite]:
    if cls == "walk":
        return [_walker(rng, scene, size) for _ in range(rng.integers(1, 3))]
    if cls == "wave":
        person = _walker(rng, scene, size, still=True)
        person.wave = person.h * 0.3
        return [person]
    if cls == "jump":
        person = _walker(rng, scene, size)
        person.vx *= 0.3
        person.vy = 0.0
        person.jump = person.h * 0.4
        return [person]
    return [_walker(rng, scene, size) for _ in range(rng.integers(4, 7))]  # crowd


def _target_video(rng, scene: Scene, size: int, num_frames: int, index: int, test: bool) -> list[Sprite]:
    sprites = [_walker(rng, scene, size) for _ in range(rng.integers(3, 6))]
    if not test:
        return sprites
    # events until about 30% of the frames are anomalous; never in the first 8 (T=4 unscored + context)
    t = int(rng.integers(8, 20))
    budget = 0.3 * num_frames
    kinds = ANOMALY_KINDS[index % len(ANOMALY_KINDS):] + ANOMALY_KINDS[:index % len(ANOMALY_KINDS)]
    for kind in kinds:
        if t >= num_frames - 8 or budget <= 0:
            break
        sprite = _anomaly(rng, kind, size, t)
        sprite.stop = min(sprite.stop, t + int(budget) + 2, num_frames - 4)
        sprites.append(sprite)
        budget -= sprite.stop - t
        t = sprite.stop + int(rng.integers(6, 14))
    return sprites


def write_video_file(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode frames with PyAV: mpeg4 in .avi, MJPEG otherwise; bit-exact so reruns give equal bytes."""
    codec = "mpeg4" if path.suffix == ".avi" else "mjpeg"
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec == "mpeg4" else "yuvj420p"
        stream.bit_rate = 2_000_000
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_frame_folder(folder: Path, frames: np.ndarray, digits: int) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:0{digits}d}.jpg", quality=92)


def _spans(labels: np.ndarray) -> np.ndarray:
    """Per-frame 0/1 -> 2xK matrix of 1-based inclusive ranges (the ped2.mat / avenue.mat form)."""
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1)
    return np.stack([starts, ends]).astype(np.float64)


def _savemat(path: Path, data: dict) -> None:
    """scipy's savemat with the creation time in the header replaced, so equal seeds give equal bytes."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, data)
    raw = buffer.getvalue()
    path.write_bytes(_MAT_HEADER + raw[len(_MAT_HEADER):])


# ----------------------------------------------------------------------------- real footage

def real_frames(path: Path, size: int, every: int = 1) -> np.ndarray:
    """Frames of a real clip (every ``every``-th), resized to ``size`` x ``size``: uint8 (N, S, S, 3)."""
    try:
        with av.open(str(path)) as container:
            frames = [np.asarray(f.to_image().resize((size, size), Image.BILINEAR))
                      for i, f in enumerate(container.decode(video=0)) if i % every == 0]
    except (av.FFmpegError, OSError) as err:
        raise ValueError(f"real footage {path}: cannot be decoded ({err})") from None
    if not frames:
        raise ValueError(f"real footage {path}: no frames")
    return np.stack(frames)


def _donor_patch(rng: np.random.Generator, donors: np.ndarray, h: int, w: int) -> np.ndarray:
    """A textured region of a random donor frame, resized to (h, w)."""
    frame = donors[rng.integers(len(donors))]
    dh, dw = frame.shape[:2]
    ch = int(dh * rng.uniform(0.3, 0.6))
    cw = min(dw, int(ch * w / h))
    y, x = int(rng.integers(0, dh - ch + 1)), int(rng.integers(0, dw - cw + 1))
    return np.asarray(Image.fromarray(frame[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR))


def _paste(img: np.ndarray, patch: np.ndarray, y: int, x: int) -> None:
    h, w = patch.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, img.shape[0]), min(x + w, img.shape[1])
    img[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]


def _real_plan(rng: np.random.Generator, start: int, size: int, num_frames: int, index: int,
               donors: np.ndarray) -> tuple[list[tuple[int, tuple | None]], list[dict]]:
    """Source frame (and pasted object, if any) of each output frame, and the injected events.

    Normal runs step one source frame at a time; a speed-up keeps every k-th frame (k of 3-5);
    an object crosses the scene at 4-8 px/frame (at 64 px). At most a third of the frames abnormal.
    """
    plan: list[tuple[int, tuple | None]] = []
    events, pos, budget = [], start, num_frames // 3

    def normal(n: int) -> None:
        nonlocal pos
        plan.extend((pos + i, None) for i in range(max(n, 0)))
        pos += max(n, 0)

    normal(int(rng.integers(8, 15)))  # the first T frames are not scored: keep them normal
    for kind in (("speed-up", "object") if index % 2 == 0 else ("object", "speed-up")):
        if budget <= 0:
            break
        first = len(plan)
        if kind == "speed-up":
            k, n = int(rng.integers(3, 6)), min(int(rng.integers(6, 11)), budget)
            plan.extend((pos + k * (i + 1), None) for i in range(n))
            pos += k * n + 1
            events.append({"kind": kind, "k": k})
        else:
            h = max(4, int(round(size * rng.uniform(0.18, 0.28))))
            w = int(round(h * rng.uniform(1.0, 1.6)))
            speed, direction = rng.uniform(4, 8) * size / 64, 1 if rng.random() < 0.5 else -1
            y = int(rng.integers(int(0.3 * size), size - h))
            patch = _donor_patch(rng, donors, h, w)
            lefts = [int(round(-w + speed * i)) for i in range(1, num_frames)]
            lefts = [x if direction > 0 else size - w - x for x in lefts if x < size][:budget]
            plan.extend((pos + i, (patch, y, x)) for i, x in enumerate(lefts))
            pos += len(lefts)
            events.append({"kind": kind, "speed_px": speed, "box_hw": [h, w], "y": y})
        events[-1]["frames"] = [first, len(plan) - 1]
        budget -= len(plan) - first
        normal(int(rng.integers(6, 13)))
    normal(num_frames - len(plan))
    events = [e for e in events if e["frames"][0] < num_frames]
    for e in events:  # an event cut by the end of the video
        e["frames"][1] = min(e["frames"][1], num_frames - 1)
    return plan[:num_frames], events


def _write_real_target(folder: Path, seed: int, size: int, count: int, num_frames: int,
                       source: Path, donor: Path, bar) -> None:
    """``target-real``: the real clip cut into ``count`` test videos with injected anomalies."""
    real = real_frames(source, size)
    donors = real_frames(donor, 4 * size, every=10)  # textures at 4x, cut and shrunk per object
    base = folder / "ped2"
    gt, record, start = [], [], 0
    for n in range(count):
        rng = np.random.default_rng([seed, 3, n])
        plan, events = _real_plan(rng, start, size, num_frames, n, donors)
        last = max(src for src, _ in plan)
        if last >= len(real):
            raise ValueError(f"real footage {source}: {len(real)} frames, too short for {count} test "
                             f"videos of {num_frames} frames (ran out in video {n + 1})")
        frames = real[[src for src, _ in plan]]  # fancy indexing copies: the clip stays untouched
        labels = np.zeros(len(plan), np.uint8)
        for t, (src, obj) in enumerate(plan):
            if obj is not None:
                _paste(frames[t], *obj)
            labels[t] = obj is not None or (t > 0 and src - plan[t - 1][0] > 1)
        video_dir = base / "testing" / "frames" / f"{n + 1:02d}"
        video_dir.mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(video_dir / f"{t:03d}.png")  # lossless: normal frames stay real
        gt.append(_spans(labels))
        record.append({"video_id": f"testing/{n + 1:02d}", "source_frames": [s for s, _ in plan],
                       "events": events})
        start = last + 1
        bar.update()
    cell = np.empty((1, len(gt)), dtype=object)
    for i, spans in enumerate(gt):
        cell[0, i] = spans
    _savemat(base / "ped2.mat", {"gt": cell})
    meta = {"source": source.name, "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "donor": donor.name, "size": size, "resize": "PIL bilinear, aspect squashed to square",
            "videos": record}
    (folder / "real.json").write_text(json.dumps(meta, indent=1) + "\n")


# ----------------------------------------------------------------------------- domains

def write_demo_domains(root: Path, seed: int = 0, *, size: int = 64, source_videos: int = 24,
                       source_frames: int = 40, test_videos: int = 6, test_frames: int = 72,
                       train_videos: int = 3, train_frames: int = 60, overwrite: bool = False,
                       progress: bool = False, real_source: Path | None = None,
                       real_donor: Path | None = None) -> dict[str, tuple[str, Path]]:
    """Write the source and two target domains under ``root``.

    Args:
        root: output folder; written to a temporary folder beside it and renamed at the end.
        seed: everything (scenes' noise, motions, anomaly schedule) follows from it.
        size: square frame size in pixels (objects and speeds scale with it).
        source_videos, source_frames: the TI-style source set (spread over :data:`SOURCE_CLASSES`).
        test_videos, test_frames, train_videos, train_frames: each target domain.
        real_source, real_donor: with a real clip, also ``target-real`` (``test_videos`` videos of
            ``test_frames`` frames cut from it; objects cut from ``real_donor``, default
            :data:`REAL_DONOR` beside the source).
        overwrite: replace an existing non-empty ``root``.
        progress: show a tqdm bar.

    Returns:
        ``{domain: (dataset name for list_videos / shards.build, domain root)}``.
    """
    root = Path(root)
    if size < 32 or size % 2:
        raise ValueError(f"size {size}: expected an even number of pixels >= 32")
    if min(source_videos, source_frames, test_videos, test_frames, train_videos, train_frames) < 1:
        raise ValueError("every video count and length must be at least 1")
    if test_frames < 30:
        raise ValueError(f"test_frames {test_frames}: expected at least 30 (room for normal and anomalous spans)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True / --overwrite)")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    if real_source is not None:
        real_donor = Path(real_donor) if real_donor else Path(real_source).parent / REAL_DONOR
        for path in (Path(real_source), real_donor):
            if not path.is_file():
                raise FileNotFoundError(f"real footage {path}: no such file")
    jobs = source_videos + 2 * (test_videos + train_videos) + (test_videos if real_source else 0)
    bar = _bar(jobs, progress)
    try:
        _write_source(work / "source", seed, size, source_videos, source_frames, bar)
        for offset, (name, dataset, digits) in enumerate((("target-street", "ped2", 3), ("target-plaza", "avenue", 4)), 1):
            _write_target(work / name, SCENES[name], dataset, digits, seed * 7919 + offset, size,
                          test_videos, test_frames, train_videos, train_frames, bar)
        domains = {"source": ("videofolder", "source"), "target-street": ("ped2", "target-street"),
                   "target-plaza": ("avenue", "target-plaza")}
        if real_source is not None:
            _write_real_target(work / "target-real", seed * 7919 + 3, size, test_videos, test_frames,
                               Path(real_source), real_donor, bar)
            domains["target-real"] = ("ped2", "target-real")
        for name, (dataset, rel) in domains.items():
            (work / rel / "domain.json").write_text(json.dumps({"name": name, "dataset": dataset}) + "\n")
        meta = {"seed": seed, "size": size,
                "domains": {n: {"dataset": d, "path": rel, "role": "source" if n == "source" else "target"}
                            for n, (d, rel) in domains.items()}}
        (work / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    return {name: (dataset, root / rel) for name, (dataset, rel) in domains.items()}


def _write_source(folder: Path, seed: int, size: int, count: int, num_frames: int, bar) -> None:
    scene = SCENES["source"]
    for n in range(count):
        cls = SOURCE_CLASSES[n % len(SOURCE_CLASSES)]
        rng = np.random.default_rng([seed, 1, n])
        frames, _ = render(scene, _source_video(rng, cls, scene, size), num_frames, size, seed * 1000 + n)
        path = folder / cls / f"{n // len(SOURCE_CLASSES):03d}.{'avi' if n % 2 == 0 else 'mkv'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_file(path, frames)
        bar.update()


def _write_target(folder: Path, scene: Scene, dataset: str, digits: int, seed: int, size: int,
                  test_videos: int, test_frames: int, train_videos: int, train_frames: int, bar) -> None:
    base = folder / dataset
    gt = []
    for kind, count, num_frames in (("training", train_videos, train_frames), ("testing", test_videos, test_frames)):
        for n in range(count):
            rng = np.random.default_rng([seed, kind == "testing", n])
            sprites = _target_video(rng, scene, size, num_frames, n, kind == "testing")
            frames, labels = render(scene, sprites, num_frames, size, seed * 1000 + n + 500 * (kind == "testing"))
            _write_frame_folder(base / kind / "frames" / f"{n + 1:02d}", frames, digits)
            if kind == "testing":
                gt.append(_spans(labels))
            bar.update()
    cell = np.empty((1, len(gt)), dtype=object)
    for i, spans in enumerate(gt):
        cell[0, i] = spans
    _savemat(base / f"{dataset}.mat", {"gt": cell})


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="demo domains", unit="video")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["jester-like"]:  # the scale-drill corpus: its own options
        from shards.jester_like import main as jester_like

        return jester_like(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m shards.demo", epilog=(
        "python -m shards.demo jester-like --videos N --out DIR writes a Jester-layout corpus "
        "for scale drills (see its --help)."), description=(
        "Write the synthetic demo domains (a TI-style source videofolder, a Ped2-style street and an "
        "Avenue-style plaza target with labelled anomalies) in the real dataset layouts, and "
        "target-real: real fixed-camera footage with injected, labelled anomalies."))
    parser.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--size", type=int, default=64, help="square frame size in pixels (default 64)")
    parser.add_argument("--source-videos", type=int, default=24, help="source videos (default 24)")
    parser.add_argument("--test-videos", type=int, default=6, help="test videos per target (default 6)")
    parser.add_argument("--real-source", type=Path, default=None, metavar="VIDEO",
                        help="fixed-camera clip for target-real (default: "
                             f"$ZXVAD_REAL_CLIPS or ../shared/data/real-clips, {REAL_SOURCE})")
    parser.add_argument("--real-donor", type=Path, default=None, metavar="VIDEO",
                        help=f"clip the foreign objects are cut from (default: {REAL_DONOR} beside the source)")
    parser.add_argument("--no-real", action="store_true", help="write no target-real")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    real = None if args.no_real else args.real_source or REAL_CLIPS / REAL_SOURCE
    if real is not None and args.real_source is None and not real.is_file():
        print(f"note: real footage {real} not found (set ZXVAD_REAL_CLIPS or --real-source): "
              "the demo runs without target-real", flush=True)
        real = None
    try:
        domains = write_demo_domains(args.out, args.seed, size=args.size, source_videos=args.source_videos,
                                     test_videos=args.test_videos, overwrite=args.overwrite, progress=True,
                                     real_source=real, real_donor=args.real_donor)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, (dataset, path) in domains.items():
        print(f"{name:14s} {dataset:12s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
