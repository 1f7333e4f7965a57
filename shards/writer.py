"""Writing a shard set: tars with their DALI index, the manifest, and resumable progress.

The builder encodes clips into a :class:`Spool` (one append-only file per hash bucket plus a
JSON-lines journal, one line per finished video), then cuts the bucket's clips, shuffled or in
video order, into tars. Nothing appears under a final name half-written: a tar is written as
``name.tar.partial`` and renamed (or uploaded to S3 and completed) when whole, and
:class:`BuildState` records each finished shard with its sample keys, so a re-run after a crash
skips finished videos and shards and writes the rest without duplicating or losing a clip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from shards.format import INDEX_SUFFIX, MANIFEST_NAME, META_EXT, VIDEO_EXT, index_name
from shards.storage import atomic_write, parse_s3_url, partial_path

DALI_INDEX_VERSION = "v1.2"  # what nvidia-dali's wds2idx writes
STATE_NAME = "state.json"
PARTIAL = ".partial"


class BuildError(RuntimeError):
    """A build cannot go on; the message is one line naming the input."""


@contextmanager
def _as_build_error():
    """S3 and URL errors stop a build like any other: one line, as a BuildError."""
    from shards.s3 import S3Error

    try:
        yield
    except (S3Error, ValueError) as e:
        raise BuildError(str(e)) from None


# ---------------------------------------------------------------------------------------- files

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- spool

@dataclass
class Clip:
    """One encoded clip held in a spool, waiting for its shard."""

    key: str
    offset: int
    length: int
    meta: str  # ClipMeta JSON
    frames: int
    video_hash: float
    order: tuple[int, int]  # (position of its video in the listing, first frame): test-set order


class Spool:
    """Encoded clips of one bucket on disk: ``stem.bin`` (the bytes) + ``stem.jsonl`` (journal).

    A journal line is written only after its video's bytes, so a line that exists points at
    complete data; on reopening, a torn last line is dropped and the bin cut back to match.
    """

    def __init__(self, stem: Path):
        self.bin_path, self.journal_path = stem.with_suffix(".bin"), stem.with_suffix(".jsonl")
        self.records: set[str] = set()  # ids only: the records stay in the journal (~1 KB a video)
        end = 0
        if self.journal_path.exists():
            good = []
            for line in self.journal_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # torn write from a killed run; everything after it is gone too
                good.append(line)
                self.records.add(record["video_id"])
                end = max([end] + [c[1] + c[2] for c in record["clips"]])
            self.journal_path.write_text("".join(line + "\n" for line in good))
        with open(self.bin_path, "ab") as f:
            f.truncate(end)
        self._bin = open(self.bin_path, "ab")
        self._journal = open(self.journal_path, "a")

    def append(self, video_id: str, order: int, video_hash: float,
               clips: Sequence[tuple[str, bytes, bytes, int]], skipped: str | None = None,
               frames_decoded: int = 0, source: str = "", fidelity: dict[str, Any] | None = None) -> None:
        """Add one finished video: ``clips`` are ``(key, meta_json, video_bytes, num_frames)``;
        ``fidelity`` is whatever the builder measured on it, kept until its bucket is written."""
        entries = []
        for key, meta, data, frames in clips:
            offset = self._bin.tell()
            self._bin.write(data)
            entries.append([key, offset, len(data), meta.decode(), frames])
        self._bin.flush()
        record = {"video_id": video_id, "order": order, "hash": video_hash, "clips": entries,
                  "skipped": skipped, "frames_decoded": frames_decoded, "source": source or video_id, "fidelity": fidelity}
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._journal.flush()
        self.records.add(video_id)

    def _records(self) -> Iterator[dict[str, Any]]:
        """The journal's records, in the order they were spooled."""
        self._journal.flush()
        with open(self.journal_path) as f:
            for line in f:
                yield json.loads(line)

    def clips(self) -> list[Clip]:
        return [Clip(key, offset, length, meta, frames, r["hash"], (r["order"], i))
                for r in self._records()
                for i, (key, offset, length, meta, frames) in enumerate(r["clips"])]

    def videos(self) -> int:
        """Videos that gave at least one clip."""
        return sum(1 for r in self._records() if r["clips"])

    def skipped(self) -> list[dict[str, str]]:
        skipped = [(r["order"], r["source"], r["skipped"]) for r in self._records() if r["skipped"]]
        return [{"input": source, "reason": reason} for _, source, reason in sorted(skipped, key=lambda t: t[0])]

    def fidelity(self) -> list[dict[str, Any]]:
        """The fidelity records of the videos that have one."""
        return [r["fidelity"] for r in self._records() if r.get("fidelity")]

    def read(self, clip: Clip) -> bytes:
        with open(self.bin_path, "rb") as f:
            f.seek(clip.offset)
            return f.read(clip.length)

    def close(self) -> None:
        self._bin.close()
        self._journal.close()

    def remove(self) -> None:
        self.close()
        self.bin_path.unlink(missing_ok=True)
        self.journal_path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ tar + idx

def write_tar(path: Path, samples: Iterable[tuple[str, Sequence[tuple[str, bytes]]]]) -> str:
    """Write a WebDataset tar with ``webdataset.TarWriter`` and return its DALI index text.

    Args:
        path: the tar file to create.
        samples: ``(key, [(ext, data), ...])`` per sample (TarWriter stores the components sorted by ext).

    Returns:
        The index: ``v1.2 N`` then, per sample, ``ext offset size name`` for each component, read
        back from the tar's headers (DALI's own wds2idx is one block off for names over 100 characters).
    """
    import webdataset as wds

    with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as sink:
        # TarWriter accepts format= but never passes it on; GNU long names keep every header in 512-byte blocks
        sink.tarstream.format = tarfile.GNU_FORMAT
        for key, components in samples:
            sink.write({"__key__": key, **dict(components)})  # mtime 0: same clips, same sha256
    return dali_index(path)


def dali_index(path: Path) -> str:
    """What ``wds2idx`` would write for the tar at ``path``, with the true data offsets."""
    lines: list[list[str]] = []
    last_key = None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if key != last_key:
                lines.append([])
                last_key = key
            lines[-1].append(f"{ext} {member.offset_data} {member.size} {member.name}")
    return f"{DALI_INDEX_VERSION} {len(lines)}\n" + "".join(" ".join(parts) + "\n" for parts in lines)


def write_shard(directory: Path, name: str, clips: Sequence[Clip], spool: Spool) -> dict[str, Any]:
    """Write ``directory/name`` (+ its index) from spooled clips; return its manifest entry.

    The tar is left as ``name.partial`` for the sink to publish; the index is written whole.
    """
    tar_partial = directory / (name + PARTIAL)
    samples = ((c.key, [(VIDEO_EXT, spool.read(c)), (META_EXT, c.meta.encode())]) for c in clips)
    index = write_tar(tar_partial, samples).encode()
    atomic_write(directory / index_name(name), index)
    return {
        "name": name,
        "index": index_name(name),
        "index_bytes": len(index),
        "index_sha256": hashlib.sha256(index).hexdigest(),
        "samples": len(clips),
        "frames": sum(c.frames for c in clips),
        "bytes": tar_partial.stat().st_size,
        "sha256": sha256_file(tar_partial),
        "hash_min": min(c.video_hash for c in clips),
        "hash_max": max(c.video_hash for c in clips),
    }


def plan_shards(clips: Sequence[Clip], max_samples: int, max_bytes: int) -> list[list[Clip]]:
    """Cut an ordered clip list into shards of at most ``max_samples`` clips and ~``max_bytes``."""
    shards: list[list[Clip]] = []
    current: list[Clip] = []
    size = 0
    for clip in clips:
        clip_bytes = 3 * tarfile.BLOCKSIZE + clip.length + len(clip.meta)  # headers + padding
        if current and (len(current) >= max_samples or size + clip_bytes > max_bytes):
            shards.append(current)
            current, size = [], 0
        current.append(clip)
        size += clip_bytes
    if current:
        shards.append(current)
    return shards


# ---------------------------------------------------------------------------------------- state

class BuildState:
    """The progress journal of one build: its options, finished shards (with keys), finished buckets.

    ``state.json`` holds the options, written once; ``state.jsonl`` gets one line per finished shard
    or bucket. Rewriting the whole state at each shard (as before) cost O(shards x clips): 1 GB of
    JSON for Jester's ~240 shards.
    """

    def __init__(self, path: Path, options: dict[str, Any]):
        self.path = path
        self.journal_path = path.with_suffix(".jsonl")
        self.options = options
        self.shards: list[dict[str, Any]] = []
        self.buckets_done: dict[str, dict[str, Any]] = {}  # bucket -> {"videos": n, "skipped": [...]}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["options"] != options:
                changed = sorted(k for k in set(saved["options"]) | set(options)
                                 if saved["options"].get(k) != options.get(k))
                raise BuildError(f"{path.parent}: holds an unfinished build with other options "
                                 f"({', '.join(changed)}); re-run with the same options or remove it")
            self._replay()

    def _replay(self) -> None:
        """Read the journal back; a torn last line (a killed write) is dropped and cut from the file."""
        if not self.journal_path.exists():
            return
        good = []
        for line in self.journal_path.read_text().splitlines(keepends=True):
            try:
                entry = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                entry = None
            if entry is None:
                break
            good.append(line)
            if "shard" in entry:
                self.shards.append(entry["shard"])
            else:
                self.buckets_done[entry["bucket"]] = entry["done"]
        self.journal_path.write_text("".join(good))

    def _append(self, entry: dict[str, Any]) -> None:
        if not self.path.exists():
            atomic_write(self.path, json.dumps({"options": self.options}).encode())
        with open(self.journal_path, "a") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def resumed(self) -> bool:
        return bool(self.shards or self.buckets_done)

    def done_keys(self, bucket: int) -> set[str]:
        return {k for s in self.shards if s["bucket"] == bucket for k in s["keys"]}

    def add_shard(self, entry: dict[str, Any], bucket: int, keys: list[str]) -> None:
        shard = {**entry, "bucket": bucket, "keys": keys}
        self._append({"shard": shard})
        self.shards.append(shard)

    def finish_bucket(self, bucket: int, videos: int, skipped: list[dict[str, str]],
                      fidelity: dict[str, Any] | None = None) -> None:
        done = {"videos": videos, "skipped": skipped, "fidelity": fidelity}
        self._append({"bucket": str(bucket), "done": done})
        self.buckets_done[str(bucket)] = done

    def bucket_done(self, bucket: int) -> bool:
        return str(bucket) in self.buckets_done

    def manifest_shards(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in s.items() if k not in ("bucket", "keys")} for s in self.shards]

    def skipped(self) -> list[dict[str, str]]:
        return [item for b in sorted(self.buckets_done, key=int) for item in self.buckets_done[b]["skipped"]]

    def videos(self) -> int:
        return sum(done["videos"] for done in self.buckets_done.values())

    def fidelity(self) -> list[dict[str, Any]]:
        """The fidelity records of the finished buckets that have one."""
        return [done["fidelity"] for done in self.buckets_done.values() if done.get("fidelity")]


# ---------------------------------------------------------------------------------------- sinks

class LocalSink:
    """Shards in a local folder; the work files (spools, state) in ``out/.build-work``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.work = self.out / ".build-work"
        self.staging = self.out  # tars are written beside their final name, then renamed
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".zxvad-writable"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise BuildError(f"{self.out}: output folder is not writable ({e.strerror})") from None

    def __str__(self) -> str:
        return str(self.out)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.out / MANIFEST_NAME
        return json.loads(path.read_text()) if path.exists() else None

    def publish(self, name: str) -> None:
        os.replace(self.out / (name + PARTIAL), self.out / name)

    def has(self, entry: dict[str, Any]) -> bool:
        path = self.out / entry["name"]
        return path.exists() and path.stat().st_size == entry["bytes"] \
            and (self.out / entry["index"]).exists()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.out / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())

    def cleanup(self, prefix: str, keep: set[str]) -> None:
        """Remove the work folder, leftover ``.partial`` files and shards of ``prefix`` not kept."""
        shutil.rmtree(self.work, ignore_errors=True)
        suffixes = rf"(\.tar|{re.escape(INDEX_SUFFIX)})({re.escape(PARTIAL)})?"
        ours = re.compile(rf"({re.escape(prefix)}-\d{{6}}){suffixes}")
        for path in self.out.glob(f"{prefix}-*"):
            match = ours.fullmatch(path.name)
            if match and (match.group(3) or match.group(1) + ".tar" not in keep):
                path.unlink(missing_ok=True)
        for path in self.out.glob(partial_path(self.out / f"{prefix}-*").name + "*"):
            path.unlink(missing_ok=True)  # an index or manifest a killed run was writing


class S3Sink:
    """Shards under ``s3://bucket/prefix``: written to a local staging folder, uploaded whole."""

    def __init__(self, url: str, work_dir: str | Path | None = None):
        from shards import s3

        self.url = url.rstrip("/")
        with _as_build_error():
            self.bucket, self.prefix = parse_s3_url(url)
            self.client = s3.client()
            s3.check_bucket(self.client, self.bucket)
        if work_dir is None:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            work_dir = cache / "zxvad" / ("build-" + hashlib.sha256(self.url.encode()).hexdigest()[:16])
        self.work = Path(work_dir)
        self.staging = self.work / "staging"
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BuildError(f"{self.work}: work folder is not writable ({e.strerror})") from None
        self._s3 = s3
        with _as_build_error():
            self.aborted = s3.abort_stale_uploads(self.client, self.bucket, self.prefix)

    def __str__(self) -> str:
        return self.url

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_manifest(self) -> dict[str, Any] | None:
        with _as_build_error():
            data = self._s3.get_bytes(self.client, self.bucket, self._key(MANIFEST_NAME))
        return json.loads(data) if data is not None else None

    def publish(self, name: str) -> None:
        partial = self.staging / (name + PARTIAL)
        sha = sha256_file(partial)
        with _as_build_error():
            self._s3.upload_file(self.client, self.staging / index_name(name), self.bucket,
                                 self._key(index_name(name)))
            self._s3.upload_file(self.client, partial, self.bucket, self._key(name), sha256=sha)
        partial.unlink()
        (self.staging / index_name(name)).unlink()

    def has(self, entry: dict[str, Any]) -> bool:
        with _as_build_error():
            head = self._s3.head(self.client, self.bucket, self._key(entry["name"]))
        return head is not None and head["size"] == entry["bytes"] \
            and head.get("sha256", entry["sha256"]) == entry["sha256"]

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with _as_build_error():
            self._s3.put_bytes(self.client, self.bucket, self._key(MANIFEST_NAME),
                               (json.dumps(manifest, indent=1) + "\n").encode())

    def cleanup(self, prefix: str, keep: set[str]) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def open_sink(out: str | Path, work_dir: str | Path | None = None) -> LocalSink | S3Sink:
    """A local folder or ``s3://bucket/prefix``."""
    if str(out).startswith("s3://"):
        return S3Sink(str(out), work_dir)
    return LocalSink(out)
