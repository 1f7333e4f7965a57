"""``python -m shards.build``: WebDataset shards of any dataset, in a local folder or on S3.

Data flow: the dataset's reader lists videos -> each video is decoded, resized and cut into
clips, and each clip encoded (VP9 or MJPEG in Matroska) in a worker process or Ray task ->
the parent spools the clips per hash bucket -> shuffles a finished bucket (training sets) or
keeps video order (test sets) -> writes ``PREFIX-%06d.tar`` + DALI index -> ``manifest.json``.

Fidelity is an explicit ``quality``: test and training sets are stored lossless by default (the
codec table in docs/data-and-shards.md is why); a sample of clips is decoded again during the build and the manifest records how far
the stored frames, and their consecutive-frame PSNRs, are from what went into the encoder.

Training sets: a video belongs to fraction ``f`` when ``video_hash(id) < f``; buckets end at
``FRACTION_CUTS`` and are written in hash order, so every cut fraction is a prefix of the shard
list. Test sets: clips of one video overlap by ``overlap`` (= T) frames, so a model that sees T
frames predicts every frame from T on exactly once; the last clip may be shorter.

Example::

    python -m shards.build ucf101 --root /data/UCF101 --out s3://bucket/ucf101 --workers 16
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from shards import readers, windows
from shards.encode import DEFAULT_FPS, check_quality, encode_clip, resize_frame, to_rgb
from shards.fidelity import Fidelity, measure_clip, summary_line
from shards.format import (FORMAT_VERSION, FRACTION_CUTS, SHARD_PATTERN, VIDEO_EXT, ClipMeta,
                           sample_key, video_hash)
from shards.writer import BuildError, BuildState, Spool, open_sink, plan_shards, write_shard

MAX_SAMPLES = 1000
MAX_BYTES = 256 * 2**20
TEST_QUALITY = "lossless"  # exact up to 4:2:0: codec noise would drown the frame-to-frame signal
# Measured with `python -m zxvad.bench codec` (docs/data-and-shards.md): `high` shifts real clips' consecutive-frame
# PSNR by 2.7 dB at 64x64, so G would learn codec pulses that lossless test frames do not have.
TRAIN_QUALITY = "lossless"
# One keyframe per clip, on its first frame, unless asked: each clip decodes on its own (it is its
# own file), and denser keyframes buy DALI 2.4 nothing inside a 16-frame clip (its decoder reads
# forward from the first frame unless it leaps over 10 frames) while costing 3-48 % more bytes
# at 4 frames apart (docs/loader.md).
FIDELITY_SAMPLE = 0.02  # clips decoded again per build, by key hash
SKIPPED_SHOWN = 20  # skipped inputs listed after a build; all of them are in the manifest


# ------------------------------------------------------------------------------- one video

def encode_video(task: tuple[Any, int, dict[str, Any]]) -> dict[str, Any]:
    """Decode, resize, cut and encode one video (runs in a worker process or a Ray task).

    Args:
        task: ``(video, position, options)``: a ``readers.Video``, its place in the listing, and
            the build options (dataset, split, clip_len, overlap, size, codec, quality,
            fidelity_sample, always_check).

    Returns:
        ``{"video_id", "position", "clips": [(key, meta_json, mkv_bytes, frames)], "skipped",
        "error", "frames_decoded", "source", "fidelity", "encode_seconds"}``; ``skipped`` is the
        reason a video was left out (unreadable, too short), ``error`` a fault that must stop the
        build (labels that do not match the frames), ``fidelity`` the sums of its checked clips.
    """
    video, position, opt = task
    result = {"video_id": video.video_id, "position": position, "clips": [], "skipped": None,
              "error": None, "frames_decoded": 0, "source": _source_name(video), "fidelity": None,
              "encode_seconds": 0.0}
    try:
        spans, n, fps, orig_size = _cut_and_encode(video, opt, result)
        damage = _damage(result, n)
    except _FidelityError as e:  # a clip that does not decode to its frames is a codec fault
        result["error"] = f"{result['source']}: {e}"
        return result
    except Exception as e:  # noqa: BLE001 - any unreadable input is skipped with its reason
        damage = _damage(result, None) or _one_line(e)
    if damage:
        if opt["split"] == "test" and video.labels is not None and not opt.get("skip_bad_test"):
            # the benchmark's AUC needs every labelled video: dropping one silently changes it
            result["error"] = (f"test video {video.video_id} ({result['source']}): {damage}; a test set "
                               "keeps every labelled video (--skip-bad-test-videos lists it instead)")
        else:
            result["skipped"], result["clips"] = damage, []
        return result
    result["frames_decoded"] = n
    try:
        readers.check_labels(video, n)
    except readers.ReaderError as e:
        result["error"] = str(e)
        return result
    if not spans:
        need = opt["clip_len"] if opt["split"] == "train" else opt["overlap"] + 1
        result["skipped"] = f"{n} frames, fewer than the {need} a clip needs" if n else "no frames decoded"
        return result
    result["clips"] = _clip_entries(video, opt, spans, n, fps, orig_size)
    return result


def _damage(result: dict[str, Any], n: int | None) -> str:
    """Why a video cannot be trusted whole (cut short, frames lost; ``n`` decoded), or ""."""
    declared, missing = result.pop("declared", n), result.pop("missing", 0)
    if missing:
        return f"truncated: the file ends {missing} frames before the end its header declares"
    if n is not None and n != declared:
        return f"decoded {n} frames, but the container holds {declared}"
    return ""


class _FidelityError(Exception):
    """A clip whose encoded bytes do not decode to the frames that went in."""


def _cut_and_encode(video, opt: dict[str, Any], result: dict[str, Any]) -> tuple[list, int, float, list[int]]:
    """``[(first frame, frames, mkv)]``, frames decoded, fps and source size of one video.

    Sampled clips are decoded again as they are encoded (their input frames are not kept), and
    their fidelity is summed into ``result["fidelity"]``.
    """
    clip_len, keep = opt["clip_len"], opt["overlap"] if opt["split"] == "test" else 0
    info = readers.probe(video)
    result["declared"], result["missing"] = info.num_frames, info.missing
    fps = float(info.fps) if info.fps and info.fps > 0 else DEFAULT_FPS
    spans: list[tuple[int, int, bytes]] = []
    buffer: list = []
    first, n, orig_size = 0, 0, [0, 0]
    clean = opt.get("clean_windows") if opt["split"] == "train" else None

    def encode(frames: list, start: int) -> None:
        began = time.perf_counter()
        data = encode_clip(frames, opt["codec"], fps, opt["quality"], opt.get("keyframe_interval", 0))
        result["encode_seconds"] += time.perf_counter() - began
        if _sampled(opt, video.video_id, start):
            try:
                measured = measure_clip(frames, data)
            except ValueError as e:
                raise _FidelityError(str(e)) from None
            total = Fidelity.from_dict(result["fidelity"]).add(measured)
            result["fidelity"] = total.to_dict()
        spans.append((start, len(frames), data))

    def resized():
        nonlocal n, orig_size
        for rgb in readers.read_frames(video):
            if n == 0:
                orig_size = list(rgb.shape[:2])
            n += 1
            yield resize_frame(rgb, tuple(opt["size"]), opt["codec"])

    if clean:  # repeated frames left out, no clip across a cut (the shorter rest is dropped)
        stream = windows.clean_frames(resized(), to_rgb, clean["cut_db"], clean["spike_db"],
                                      counts=result.setdefault("clean", {}))
    else:
        stream = ((i, frame, False) for i, frame in enumerate(resized()))
    for index, frame, new_segment in stream:
        if new_segment:
            buffer = []
        if not buffer:
            first = index
        buffer.append(frame)
        if len(buffer) == clip_len:
            encode(buffer, first)
            buffer = buffer[clip_len - keep:] if keep else []
            first = index + 1 - len(buffer)
    if keep and len(buffer) > keep:  # test sets: a shorter last clip for the frames left
        encode(buffer, first)
    return spans, n, fps, orig_size


def _sampled(opt: dict[str, Any], video_id: str, start: int) -> bool:
    """Clips checked for fidelity: by key hash, and always the first clip of ``always_check``."""
    key = sample_key(opt["dataset"], video_id, start)
    return video_hash(key) < opt["fidelity_sample"] or (start == 0 and video_id == opt["always_check"])


def _clip_entries(video, opt: dict[str, Any], spans: list, n: int, fps: float,
                  orig_size: list[int]) -> list[tuple[str, bytes, bytes, int]]:
    """``(key, meta_json, mkv_bytes, frames)`` of each clip of one video."""
    labels = np.asarray(video.labels).astype(int).tolist() if video.labels is not None else None
    entries = []
    for i, (start, count, data) in enumerate(spans):
        meta = ClipMeta(dataset=opt["dataset"], video_id=video.video_id, first_frame=start,
                        num_frames=count, fps=fps, orig_size=orig_size, size=list(opt["size"]),
                        split=opt["split"], codec=opt["codec"], label_class=video.label_class or "",
                        labels=labels[start:start + count] if labels is not None else [],
                        video_frames=n, last_clip=opt["split"] == "test" and i == len(spans) - 1,
                        quality=opt["quality"])
        entries.append((sample_key(opt["dataset"], video.video_id, start), meta.to_json(), data, count))
    return entries


def _input_bytes(video) -> int:
    """The size of a video's file(s): a cheap guess at how long it takes to encode."""
    try:
        if isinstance(video.source, readers.FRAME_LISTS):
            return len(video.source) * (os.path.getsize(video.source[0]) if video.source else 0)
        return os.path.getsize(video.source)
    except OSError:
        return 0


def _source_name(video) -> str:
    source = video.source
    if isinstance(source, readers.FRAME_LISTS):
        return str(Path(source[0]).parent) if source else video.video_id
    return str(source)


def _one_line(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:300]
    return text if isinstance(error, readers.ReaderError) and text else f"{type(error).__name__}: {text}"


# ------------------------------------------------------------------------------- executors

def _run_local(tasks: Iterable, workers: int) -> Iterator[dict[str, Any]]:
    if workers == 1:
        yield from map(encode_video, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(encode_video, tasks, chunksize=1)


def _run_ray(tasks: Iterable) -> Iterator[dict[str, Any]]:
    """Fan the videos out as Ray tasks (a local Ray, or the cluster at RAY_ADDRESS)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=2)(encode_video)
    window = max(4, 4 * int(ray.cluster_resources().get("CPU", 1)))  # bounds results held in the store
    queue, pending = iter(tasks), []
    while True:
        while len(pending) < window and (task := next(queue, None)) is not None:
            pending.append(remote.remote(task))
        if not pending:
            return
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


# ------------------------------------------------------------------------------------ build

def bucket_of(hash_value: float, split: str) -> int:
    """Training sets: the FRACTION_CUTS interval holding the hash; test sets: one bucket."""
    return bisect.bisect_right(FRACTION_CUTS, hash_value) if split == "train" else 0


def default_quality(split: str, codec: str = "vp9") -> str:
    """``TEST_QUALITY`` or ``TRAIN_QUALITY`` for VP9; MJPEG has no lossless mode DALI decodes: high."""
    if codec != "vp9":
        return "high"
    return TEST_QUALITY if split == "test" else TRAIN_QUALITY


@dataclass(frozen=True)
class BuildOptions:
    """How a dataset split is sharded: every option of ``python -m shards.build`` but the paths.

    Attributes:
        split: ``"train"`` (shuffled, nested fractions) or ``"test"`` (video order, overlapping).
        clip_len: frames per clip.
        overlap: frames shared by consecutive test clips (T of the model).
        size: ``(H, W)`` of the stored frames, both even (``"HxW"`` or one int are accepted).
        codec: ``"vp9"`` or ``"mjpeg"``.
        quality: ``"lossless"`` (VP9 only), ``"high"`` or ``"compact"``; None: :func:`default_quality`.
        fidelity_sample: fraction of clips decoded again to measure fidelity (by key hash; the first
            clip of the first video is always checked).
        fraction: keep the videos whose id-hash is below it.
        workers: encoding processes (ignored with ``use_ray``).
        seed: the training-set shuffle.
        max_samples: clips per shard at most.
        max_bytes: bytes per shard, about (a single larger clip still gets its own shard).
        prefix: shard names ``PREFIX-%06d.tar``; default ``DATASET-SPLIT``.
        use_ray: encode videos as Ray tasks.
        progress: show a progress bar.
        list_split: the dataset's official split list where it has several (UCF101, HMDB51).
        work_dir: for S3 outputs, where the staging files and resume state live.
        skip_bad_test_videos: list an unreadable, truncated or short-decoding labelled test video
            as skipped instead of stopping the build.
        clean_windows: training sets: leave out repeated frames and start a new clip after a
            scene cut (``shards.windows``; its thresholds go into the manifest). Test sets keep
            every frame.
        keyframe_interval: VP9 frames between keyframes inside a clip (recorded in the manifest;
            MJPEG's are all keyframes: 1); None: ``clip_len``, the clip's first frame only.
    """

    split: str = "train"
    clip_len: int = 16
    overlap: int = 4
    size: tuple[int, int] | str | int = (256, 256)
    codec: str = "vp9"
    quality: str | None = None
    fidelity_sample: float = FIDELITY_SAMPLE
    fraction: float = 1.0
    workers: int = 1
    seed: int = 0
    max_samples: int = MAX_SAMPLES
    max_bytes: int = MAX_BYTES
    prefix: str | None = None
    use_ray: bool = False
    progress: bool = True
    list_split: int = 1
    work_dir: str | Path | None = None
    skip_bad_test_videos: bool = False
    clean_windows: bool = True
    keyframe_interval: int | None = None

    def checked(self, dataset: str) -> "BuildOptions":
        """Validated, with the size as ``(H, W)`` and the quality, keyframe interval and prefix
        filled in; BuildError otherwise."""
        keyframe_interval = self.clip_len if self.keyframe_interval is None else self.keyframe_interval
        if self.codec == "mjpeg":
            keyframe_interval = 1
        if keyframe_interval < 1:
            raise BuildError(f"keyframe_interval {keyframe_interval!r}: expected at least 1")
        if dataset not in readers.DATASETS:
            raise BuildError(f"unknown dataset {dataset!r} (known: {', '.join(sorted(readers.DATASETS))})")
        if self.split not in ("train", "test"):
            raise BuildError(f"split {self.split!r}: expected train or test")
        quality = self.quality or default_quality(self.split, self.codec)
        try:
            check_quality(self.codec, quality)
        except ValueError as e:
            raise BuildError(str(e)) from None
        size = parse_size(str(self.size)) if isinstance(self.size, (int, str)) else self.size
        size = tuple(int(x) for x in size)
        if len(size) != 2 or min(size) < 2 or any(x % 2 for x in size):
            raise BuildError(f"size {size!r}: expected two even numbers >= 2 (H, W)")
        checks = [("clip_len", self.clip_len, self.clip_len >= 2, "at least 2"),
                  ("overlap", self.overlap, self.split == "train" or 0 <= self.overlap < self.clip_len,
                   "in [0, clip_len)"),
                  ("fraction", self.fraction, 0 < self.fraction <= 1, "in (0, 1]"),
                  ("fidelity_sample", self.fidelity_sample, 0 <= self.fidelity_sample <= 1, "in [0, 1]"),
                  ("workers", self.workers, self.workers >= 1, "at least 1"),
                  ("max_samples", self.max_samples, self.max_samples >= 1, "at least 1"),
                  ("max_bytes", self.max_bytes, self.max_bytes >= 1, "at least 1")]
        for name, value, ok, expected in checks:
            if not ok:
                raise BuildError(f"{name} {value!r}: expected {expected}")
        return replace(self, size=size, quality=quality, prefix=self.prefix or f"{dataset}-{self.split}",
                       keyframe_interval=keyframe_interval)

    def recorded(self, root: str | Path) -> dict[str, Any]:
        """The options a manifest records, and a resumed build must match (of checked options)."""
        return {"root": str(Path(root).resolve()), "list_split": self.list_split, "clip_len": self.clip_len,
                "overlap": self.overlap, "size": list(self.size), "codec": self.codec, "quality": self.quality,
                "fidelity_sample": self.fidelity_sample, "fraction": self.fraction, "seed": self.seed,
                "max_samples": self.max_samples, "max_bytes": self.max_bytes, "prefix": self.prefix,
                "video_ext": VIDEO_EXT, "clean_windows": _clean_thresholds(self.split, self.clean_windows),
                "keyframe_interval": self.keyframe_interval}

    def encoding(self, dataset: str, always_check: str) -> dict[str, Any]:
        """What each encoding task needs (a plain dict: it travels to worker processes and Ray tasks)."""
        return {"dataset": dataset, "split": self.split, "clip_len": self.clip_len, "overlap": self.overlap,
                "size": list(self.size), "codec": self.codec, "quality": self.quality,
                "fidelity_sample": self.fidelity_sample, "always_check": always_check,
                "skip_bad_test": self.skip_bad_test_videos,
                "clean_windows": _clean_thresholds(self.split, self.clean_windows),
                "keyframe_interval": self.keyframe_interval}


def build(dataset: str, root: str | Path, out: str | Path, options: BuildOptions | None = None,
          **changes: Any) -> dict[str, Any]:
    """Shard a dataset split into ``out`` (a folder or ``s3://bucket/prefix``); resumable.

    Args:
        dataset: a name in ``readers.DATASETS``.
        root: the dataset's folder.
        out: the output folder or ``s3://bucket/prefix``.
        options: how to shard it (:class:`BuildOptions`); ``changes`` replace single fields of it,
            e.g. ``build("ped2", root, out, split="test", size=(64, 64))``.

    Returns:
        The manifest (as written to ``manifest.json``) plus ``"run"``: statistics of this run.

    Raises:
        BuildError: bad options, a missing root or unknown layout, an unwritable output, S3
            errors, or labels that do not match a video's frames.
    """
    started = time.time()
    opts = replace(options or BuildOptions(), **changes).checked(dataset)
    split, prefix = opts.split, opts.prefix
    tasks = _Tasks(dataset, root, split, opts.list_split, opts.fraction)
    header = {"format_version": FORMAT_VERSION, "dataset": dataset, "split": split, "options": opts.recorded(root)}
    sink = open_sink(out, opts.work_dir)
    run = {"seconds": 0.0, "frames_decoded": 0, "frames_per_second": 0.0, "encode_seconds": 0.0,
           "resumed": False, "aborted_uploads": getattr(sink, "aborted", 0)}

    state, finished = _open_state(sink, header, prefix)
    if finished is not None:  # built before with the same options: nothing to do
        return {**finished, "run": {**run, "resumed": True}}
    run["resumed"] = state.resumed
    writer = _BucketWriter(sink, state, tasks, split, opts.seed, prefix, opts.max_samples, opts.max_bytes)
    work = writer.work(opts.encoding(dataset, always_check=tasks.video(0).video_id))
    _encode_all(writer, work, len(tasks), workers=opts.workers, use_ray=opts.use_ray, run=run,
                bar=tqdm(total=len(tasks), unit="video", disable=not opts.progress, desc=f"{dataset}-{split}",
                         dynamic_ncols=True))
    tasks.close()

    manifest = _publish_manifest(sink, _manifest(header, state, tasks.skipped), root, prefix)
    run["seconds"] = time.time() - started
    run["frames_per_second"] = run["frames_decoded"] / max(run["seconds"], 1e-9)
    return {**manifest, "run": run}


def _clean_thresholds(split: str, on: bool) -> dict[str, float] | None:
    """The clean-window thresholds a training set is built with (None: off, or a test set)."""
    if split != "train" or not on:
        return None
    return {"cut_db": windows.CUT_DB, "spike_db": windows.SPIKE_DB}


def _publish_manifest(sink, manifest: dict[str, Any], root: str | Path, prefix: str) -> dict[str, Any]:
    """Write ``manifest`` and drop the build's work files; refuse a manifest of no clips."""
    if manifest["totals"]["clips"] == 0:  # a manifest of nothing would pass for a shard set
        first = manifest["skipped"][0] if manifest["skipped"] else {"input": root, "reason": "no videos"}
        sink.cleanup(prefix, set())  # nothing to resume: no work files left behind either
        raise BuildError(f"no clips written: all {manifest['totals']['skipped']} inputs were skipped "
                         f"(first: {first['input']}: {first['reason']})")
    sink.write_manifest(manifest)
    sink.cleanup(prefix, {s["name"] for s in manifest["shards"]})
    return manifest


class _Tasks:
    """The videos to shard, in task order: by hash (training sets) or listing (test sets).

    Videos are listed one at a time and pickled to an unnamed temporary file; in memory stay ~50
    bytes a video (hash, listing position, input size, place in the file) instead of the ~1.2 KB of
    a ``Video`` with its frame list, so the driver does not grow with the corpus (Jester: 148,092
    videos). Repeated ids and sample keys are found from 8-byte digests of the keys.
    """

    def __init__(self, dataset: str, root: str | Path, split: str, list_split: int, fraction: float):
        self.skipped: list[tuple[str, str]] = []  # listed inputs that are missing or empty
        self._file = tempfile.TemporaryFile()
        cols = {name: array("d" if name == "hash" else "q") for name in ("hash", "position", "offset", "length", "bytes")}
        digests, listed = array("Q"), 0
        try:
            for listed, video in enumerate(readers.iter_videos(dataset, root, split, list_split=list_split,
                                                               skipped=self.skipped), 1):
                digests.append(_digest(sample_key(dataset, video.video_id, 0)))
                h = video_hash(video.video_id)
                if h < fraction:
                    data = pickle.dumps(video, protocol=pickle.HIGHEST_PROTOCOL)
                    for name, value in (("hash", h), ("position", listed - 1), ("offset", self._file.tell()),
                                        ("length", len(data)), ("bytes", _input_bytes(video))):
                        cols[name].append(value)
                    self._file.write(data)
        except readers.ReaderError as e:
            raise BuildError(str(e)) from None
        self._file.flush()
        if not listed:
            raise BuildError(f"{dataset}: no {split} videos found under {Path(root).expanduser()}")
        self._check_keys(np.frombuffer(digests, dtype=np.uint64), dataset, root, split, list_split)
        columns = {name: np.array(col) for name, col in cols.items()}
        order = np.lexsort((columns["position"], columns["hash"])) if split == "train" else slice(None)
        self.hash, self.position, self._offset, self._length, self.bytes = (
            columns[name][order] for name in ("hash", "position", "offset", "length", "bytes"))
        if not len(self.hash):
            raise BuildError(f"fraction {fraction}: none of the {listed} videos under {root} falls below it")
        self._hash_at = np.full(listed, np.nan)
        self._hash_at[self.position] = self.hash

    def __len__(self) -> int:
        return len(self.hash)

    def video(self, i: int):
        """Task ``i``'s ``readers.Video``, read back from the file (thread-safe: ``os.pread``)."""
        return pickle.loads(os.pread(self._file.fileno(), int(self._length[i]), int(self._offset[i])))

    def hash_of(self, position: int) -> float:
        """The id-hash of the video at ``position`` in the listing."""
        return float(self._hash_at[position])

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def _check_keys(digests: np.ndarray, dataset: str, root, split: str, list_split: int) -> None:
        ordered = np.sort(digests)
        repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if not repeated:
            return
        first: dict[str, str] = {}
        for video in readers.iter_videos(dataset, root, split, list_split=list_split):  # rare: list again for names
            key = sample_key(dataset, video.video_id, 0)
            if _digest(key) in repeated:
                if key in first and first[key] == video.video_id:
                    raise BuildError(f"{dataset}: video id {video.video_id!r} appears twice under "
                                     f"{Path(root).expanduser()}")
                if key in first:
                    raise BuildError(f"videos {first[key]!r} and {video.video_id!r} map to the same sample key")
                first[key] = video.video_id


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _encode_all(writer: "_BucketWriter", work: Iterable, total: int, *, workers: int, use_ray: bool,
                run: dict[str, Any], bar) -> None:
    """Encode ``work`` (in processes or Ray tasks), spool each video, write buckets as they finish."""
    began = time.time()
    bar.update(total - sum(writer.remaining.values()))  # videos spooled by an interrupted run
    results = _run_ray(work) if use_ray else _run_local(work, workers)
    try:
        writer.flush()
        for result in results:
            if result["error"]:
                raise BuildError(result["error"])
            writer.add(result)
            run["frames_decoded"] += result["frames_decoded"]
            for key, value in result.get("clean", {}).items():  # repeated frames and cuts
                run[key] = run.get(key, 0) + value
            run["encode_seconds"] += result["encode_seconds"]
            bar.update(1)
            bar.set_postfix(fps=f"{run['frames_decoded'] / max(time.time() - began, 1e-9):.0f}")
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()  # stops the worker pool when the loop ends early
        writer.close()
    if writer.pending:
        raise BuildError(f"{writer.sink}: buckets {writer.pending} did not finish")  # a result went missing


class _BucketWriter:
    """Spools finished videos per hash bucket; writes a bucket's shards once all its videos are in.

    Buckets are written in hash order, so every ``FRACTION_CUTS`` fraction is a prefix of the shards.
    """

    def __init__(self, sink, state: BuildState, tasks: _Tasks, split: str, seed: int, prefix: str,
                 max_samples: int, max_bytes: int):
        self.sink, self.state, self.split, self.seed, self.prefix = sink, state, split, seed, prefix
        self.max_samples, self.max_bytes, self.tasks = max_samples, max_bytes, tasks
        self.bucket = (np.searchsorted(FRACTION_CUTS, tasks.hash, side="right") if split == "train"
                       else np.zeros(len(tasks), dtype=np.int64))  # = bucket_of, per task
        buckets = sorted(set(self.bucket.tolist()) | {int(b) for b in state.buckets_done})
        self.spools = {b: Spool(sink.work / f"bucket-{b:02d}") for b in buckets if not state.bucket_done(b)}
        self.todo = np.isin(self.bucket, list(self.spools))
        for b, spool in self.spools.items():
            if spool.records:  # resumed: the videos an interrupted run spooled are not encoded again
                for i in np.flatnonzero(self.bucket == b):
                    self.todo[i] = tasks.video(i).video_id not in spool.records
        self.remaining = {b: int(np.count_nonzero(self.todo & (self.bucket == b))) for b in self.spools}
        self.pending = sorted(self.spools)

    def work(self, opt: dict[str, Any]) -> Iterator[tuple[Any, int, dict[str, Any]]]:
        """Encoding tasks, read one at a time: buckets in hash order, in each the longest videos first
        (no idle tail)."""
        order = np.lexsort((np.arange(len(self.tasks)), -self.tasks.bytes, self.bucket))
        return ((self.tasks.video(i), int(self.tasks.position[i]), opt) for i in order if self.todo[i])

    def add(self, result: dict[str, Any]) -> None:
        vid, h = result["video_id"], self.tasks.hash_of(result["position"])
        b = bucket_of(h, self.split)
        self.spools[b].append(vid, result["position"], h, result["clips"], result["skipped"],
                              result["frames_decoded"], result["source"], result["fidelity"])
        self.remaining[b] -= 1
        self.flush()

    def flush(self) -> None:
        """Write the shards of every leading bucket whose videos are all spooled."""
        while self.pending and self.remaining[self.pending[0]] == 0:
            self._write_bucket(self.pending.pop(0))

    def _write_bucket(self, b: int) -> None:
        spool = self.spools[b]
        index = spool.index()  # columns, not a Clip per clip: the last bucket is half the corpus
        if self.split == "train":  # the same seed gives the same clip-to-shard assignment on a re-run
            by_key = np.argsort(index.key, kind="stable")
            order = by_key[np.random.default_rng([self.seed, b]).permutation(len(by_key))]
        else:
            order = np.lexsort((index.number, index.position))
        done = self.state.done_keys(b)
        if done:
            order = order[np.array([index.key[i].decode() not in done for i in order], dtype=bool)]
        clips = (spool.clip(index, i) for i in order)
        for group in plan_shards(clips, self.max_samples, self.max_bytes):
            name = SHARD_PATTERN.format(prefix=self.prefix, index=len(self.state.shards))
            entry = write_shard(self.sink.staging, name, group, spool)
            self.sink.publish(name)
            self.state.add_shard(entry, b, [c.key for c in group])
        fidelity = _sum_fidelity(spool.fidelity())
        self.state.finish_bucket(b, spool.videos(), spool.skipped(), fidelity.to_dict() if fidelity.clips else None)
        spool.remove()

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()


def _sum_fidelity(records: list[dict[str, Any]]) -> Fidelity:
    total = Fidelity()
    for record in records:
        total = total.add(Fidelity.from_dict(record))
    return total


def _open_state(sink, header: dict[str, Any], prefix: str) -> tuple[BuildState, dict[str, Any] | None]:
    """The progress journal of this build, or the manifest of an identical finished one."""
    existing = sink.read_manifest()
    state_path = sink.work / "state.json"
    if existing is not None and not state_path.exists():
        if {k: existing.get(k) for k in header} != header:
            raise BuildError(f"{sink}: already holds a shard set built with other options; "
                             "choose another --out or remove it")
        sink.cleanup(prefix, {s["name"] for s in existing["shards"]})
        return BuildState(state_path, header), existing
    sink.work.mkdir(parents=True, exist_ok=True)
    state = BuildState(state_path, header)
    for entry in state.shards:
        if not sink.has(entry):
            raise BuildError(f"{sink}: {entry['name']} was written by the interrupted build but is now "
                             f"missing or changed; remove {sink.work} to start over")
    return state, None


def _manifest(header: dict[str, Any], state: BuildState,
              listing_skipped: list[tuple[str, str]]) -> dict[str, Any]:
    shards = state.manifest_shards()
    skipped = [{"input": str(path), "reason": reason} for path, reason in listing_skipped] + state.skipped()
    totals = {"videos": state.videos(), "clips": sum(s["samples"] for s in shards),
              "frames": sum(s["frames"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
              "skipped": len(skipped), "shards": len(shards)}
    fidelity = _sum_fidelity(state.fidelity()).report(header["options"]["fidelity_sample"])
    return {**header, "shards": shards, "skipped": skipped, "totals": totals, "fidelity": fidelity}


# -------------------------------------------------------------------------------------- CLI

def parse_size(text: str) -> tuple[int, int]:
    """``"128x160"`` -> ``(128, 160)`` (H x W); ``"64"`` -> ``(64, 64)``."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BuildError(f"size {text!r}: expected HxW, e.g. 256x256") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 2 or any(v % 2 for v in values):
        raise BuildError(f"size {text!r}: expected HxW with two even numbers >= 2, e.g. 256x256")
    return values[0], values[1]


def parse_bytes(text: str) -> int:
    """``"512MB"`` -> 536870912; plain numbers are bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise BuildError(f"--max-bytes {text!r}: expected a size such as 500000000 or 512MB") from None


def summary(manifest: dict[str, Any]) -> str:
    """The lines the CLI prints after a build."""
    t, run, options = manifest["totals"], manifest.get("run", {}), manifest["options"]
    encode_fps = run.get("frames_decoded", 0) / run["encode_seconds"] if run.get("encode_seconds") else 0
    lines = [f"{t['shards']} shards, {t['videos']} videos, {t['clips']} clips, {t['frames']} frames, "
             f"{t['bytes'] / 2**20:.1f} MiB ({t['bytes'] / max(t['frames'], 1):.0f} bytes/frame), "
             f"{t['skipped']} skipped; stored {options['codec']} {options.get('quality', '?')}",
             f"{run.get('frames_decoded', 0)} frames decoded in {run.get('seconds', 0):.1f} s: "
             f"{run.get('frames_per_second', 0):.1f} frames/s"
             + (f" (encoder alone {encode_fps:.0f} frames/s)" if encode_fps else "")
             + (" (resumed)" if run.get("resumed") else ""),
             summary_line(manifest.get("fidelity"))]
    clean = options.get("clean_windows")
    if clean:
        lines.append(f"clean windows: {run.get('duplicates', 0)} repeated frames left out, "
                     f"{run.get('cuts', 0)} cuts split (steps over {clean['spike_db']:g} dB above a "
                     f"neighbouring step, or below {clean['cut_db']:g} dB)")
    lines += [f"skipped {s['input']}: {s['reason']}" for s in manifest["skipped"][:SKIPPED_SHOWN]]
    if len(manifest["skipped"]) > SKIPPED_SHOWN:  # a Jester-sized build can skip thousands
        lines.append(f"... and {len(manifest['skipped']) - SKIPPED_SHOWN} more skipped (see manifest.json)")
    return "\n".join(lines)


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (exit 2), like every other bad input."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Iterable[str] | None = None) -> int:
    p = _OneLineParser(prog="python -m shards.build", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="one of: " + ", ".join(sorted(readers.DATASETS)))
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument("--out", required=True, help="output folder or s3://BUCKET/PREFIX")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive test clips (T)")
    p.add_argument("--size", default="256x256", help="stored frame size HxW (even numbers)")
    p.add_argument("--codec", default="vp9", help="vp9 (compact) or mjpeg (fast to decode)")
    p.add_argument("--quality", default=None, help="lossless (vp9 only), high or compact; default: "
                   f"{TEST_QUALITY} for --split test, {TRAIN_QUALITY} for train (high with mjpeg)")
    p.add_argument("--fidelity-sample", type=float, default=FIDELITY_SAMPLE,
                   help="fraction of clips decoded again to measure fidelity (1 = every clip)")
    p.add_argument("--fraction", type=float, default=1.0, help="keep videos whose id-hash is below it")
    p.add_argument("--workers", type=int, default=1, help="encoding processes")
    p.add_argument("--ray", action="store_true", help="encode as Ray tasks (local Ray or RAY_ADDRESS)")
    p.add_argument("--seed", type=int, default=0, help="training-set shuffle")
    p.add_argument("--max-samples", type=int, default=MAX_SAMPLES, help="clips per shard at most")
    p.add_argument("--max-bytes", default=str(MAX_BYTES), help="bytes per shard, about (e.g. 512MB)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: DATASET-SPLIT)")
    p.add_argument("--list-split", type=int, default=1, help="official split list (UCF101, HMDB51)")
    p.add_argument("--work-dir", default=None, help="S3 outputs: local staging and resume state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--clean-windows", action=argparse.BooleanOptionalAction, default=True,
                   help="training sets: leave out repeated frames and split clips at scene cuts "
                        "(thresholds in shards/windows.py, recorded in manifest.json)")
    p.add_argument("--keyframe-interval", type=int, default=None,
                   help="VP9 frames between keyframes in a clip (default: the clip length, one per clip)")
    p.add_argument("--skip-bad-test-videos", action="store_true",
                   help="test sets: list an unreadable or truncated labelled video as skipped instead of stopping")
    args = p.parse_args(argv)
    try:
        options = BuildOptions(split=args.split, clip_len=args.clip_len, overlap=args.overlap,
                               size=parse_size(args.size), codec=args.codec, quality=args.quality,
                               fidelity_sample=args.fidelity_sample, fraction=args.fraction,
                               workers=args.workers, seed=args.seed, max_samples=args.max_samples,
                               max_bytes=parse_bytes(args.max_bytes), prefix=args.prefix, use_ray=args.ray,
                               progress=not args.quiet, list_split=args.list_split, work_dir=args.work_dir,
                               skip_bad_test_videos=args.skip_bad_test_videos,
                               clean_windows=args.clean_windows, keyframe_interval=args.keyframe_interval)
        manifest = build(args.dataset, args.root, args.out, options)
    except (BuildError, readers.ReaderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to finish the build", file=sys.stderr)
        return 130
    print(summary(manifest))
    print(f"wrote {args.out.rstrip('/')}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
