"""The shard format (docs/data-and-shards.md): the one place that says what a shard holds.

``shards.build`` writes it and ``zxvad.data`` reads it; both import the names below.

A shard set is a folder (or ``s3://bucket/prefix``) holding ``PREFIX-%06d.tar`` files, a DALI
index ``PREFIX-%06d.idx`` beside each, and ``manifest.json``. One sample is one clip of
consecutive frames of one source video:

- ``<key>.<VIDEO_EXT>``: the clip, VP9 or MJPEG, decodable by DALI on the CPU and the GPU;
- ``<key>.json``: :class:`ClipMeta` as JSON.

Fractions are stable and nested: a video belongs to fraction ``f`` when ``video_hash(id) < f``.
Shards are written in increasing hash order and each manifest entry records the largest hash
of its videos (``hash_max``), so fraction ``f`` is the prefix of shards with ``hash_max < f``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "{prefix}-{index:06d}.tar"
INDEX_SUFFIX = ".idx"  # DALI webdataset index beside each tar: foo-000000.tar -> foo-000000.idx
VIDEO_EXT = "mkv"  # Matroska holds both VP9 and MJPEG and FFmpeg/DALI demux it
META_EXT = "json"
CODECS = ("vp9", "mjpeg")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# The builder starts a new shard at each of these hashes, so these fractions are exact prefixes.
FRACTION_CUTS = (0.0125, 0.08, 0.25, 0.5)


@dataclass
class ClipMeta:
    """What ``<key>.json`` holds for one clip."""

    dataset: str
    video_id: str
    first_frame: int  # index of the clip's first frame in its source video (0-based)
    num_frames: int
    fps: float
    orig_size: list[int]  # [H, W] of the source video
    size: list[int]  # [H, W] as stored in the clip
    split: str  # train | test
    codec: str
    label_class: str = ""  # action class where the dataset has one
    labels: list[int] = field(default_factory=list)  # test sets: per-frame 0/1, len == num_frames
    video_frames: int = 0  # length of the whole source video
    last_clip: bool = False  # test sets: the last clip of its video
    quality: str = ""  # lossless | high | compact ("" : built before qualities were recorded)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "ClipMeta":
        raw = json.loads(data)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def sample_key(dataset: str, video_id: str, first_frame: int) -> str:
    """A WebDataset key: no dots (WebDataset splits on the first dot) and no slashes."""
    safe = _KEY_UNSAFE.sub("_", f"{dataset}_{video_id}").strip("_")
    return f"{safe}_{first_frame:06d}"


def video_hash(video_id: str) -> float:
    """A stable number in [0, 1) per video id: the basis of nested fractions."""
    digest = hashlib.sha256(video_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def index_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + INDEX_SUFFIX if tar_name.endswith(".tar") else tar_name + INDEX_SUFFIX


def shards_for_fraction(manifest: dict[str, Any], fraction: float) -> list[dict[str, Any]]:
    """The stable prefix of the manifest's shards that holds the videos of ``fraction``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction!r}: expected a number in (0, 1]")
    shards = manifest["shards"]
    if fraction >= 1:
        return list(shards)
    return [s for s in shards if s["hash_max"] < fraction]
