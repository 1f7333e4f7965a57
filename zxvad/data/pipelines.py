"""DALI pipelines from shards to torch tensors (docs/data-and-shards.md): training clips, donor frames
for O, and ordered evaluation clips.

    shards (local or s3://) -> fn.readers.webdataset (rank's part, shuffled) -> fn.decoders.video
    ("mixed" on a GPU, "cpu" otherwise) -> T+1 consecutive frames at a random start -> resize
    -> float in [-1, 1] -> torch (B, T+1, 3, H, W) on the training device

Decoding is most of a loader's CPU. DALI 2.4's decoder reads a clip forward from its first frame
(it seeks to a keyframe only for leaps of more than 10 frames), so a window at start s of a
stored clip costs s + T+1 decoded frames, whatever the keyframe layout. The training loaders
therefore either stop decoding after the window (one window per clip) or decode the clip once
and cut ``windows_per_clip`` windows from it, each at a uniform start, mixed across batches by
a shuffle buffer (docs/loader.md has the measurements).

Every reader pads its part with ``pad_last_batch`` so that all ranks run the same number of steps
per epoch; the evaluation loader drops those padding duplicates before any clip reaches a metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy, feed_ndarray

from shards.format import META_EXT, VIDEO_EXT, ClipMeta
from zxvad.data.shardset import ShardError, ShardInfo, checked_shards, is_s3, stored_quality

READER = "reader"  # the reader's name, through which iterators learn the epoch size


# -- pipeline pieces ---------------------------------------------------------------------------------

def _device(device: str | torch.device) -> tuple[torch.device, int | None]:
    """The torch device and DALI's ``device_id`` (None: CPU only, no CUDA at all)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ShardError(f"device {device}: CUDA is not available; use device='cpu'")
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.device("cuda", index), index
    return torch.device("cpu"), None


def _reader(infos: list[ShardInfo], *, exts: list[str], shard_id: int, num_shards: int,
            shuffle: bool, seed: int, buffer: int, stick_to_shard: bool = False):
    shuffle_args = dict(shuffle_after_epoch=True, shuffle_after_epoch_seed=seed % 2**31) if shuffle else {}
    return fn.readers.webdataset(
        paths=[i.path for i in infos], index_paths=[i.index_path for i in infos], ext=exts,
        missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
        pad_last_batch=True, random_shuffle=shuffle, initial_fill=max(buffer, 1),
        stick_to_shard=stick_to_shard, **shuffle_args,
        dont_use_mmap=is_s3(infos[0].path), name=READER)


def _random_below(n):
    """A per-sample random integer in [0, n) for a per-sample DataNode ``n`` >= 1."""
    draw = fn.cast(fn.random.uniform(range=[0.0, float(2**24)]), dtype=types.INT64)
    return draw % n


def _resized(frames, size, stored):
    """``frames`` at ``size``; frames stored at that size skip the resize (a copy per frame)."""
    return frames if stored and tuple(stored) == tuple(size) else fn.resize(frames, size=list(size))


def _to_float(frames, layout: str):
    """uint8 HWC frames -> float in [-1, 1], channels first."""
    return fn.crop_mirror_normalize(frames, dtype=types.FLOAT, mean=[127.5] * 3, std=[127.5] * 3,
                                    output_layout=layout)


def _windows(frames, count: int, extent: int, stride: int):
    """``count`` windows of ``extent`` frames (every ``stride``-th kept) from one decoded clip.

    The first start is uniform over the clip's valid starts and the others follow it cyclically,
    at least ``extent`` apart and spread over the clip: every window's start is uniform on its
    own (one window is distributed as a single draw), and for ``count * extent`` <= the clip's
    frames the windows are disjoint whenever the first start leaves room for them in order.
    """
    starts = frames.shape(device="cpu")[0] - extent + 1
    first = _random_below(starts)
    apart = fn.cast(dali_math.max(starts // count, extent), dtype=types.INT64)
    cut = []
    for j in range(count):
        start = (first + j * apart) % starts
        cut.append(frames[start:start + extent:stride])
    return cut


@pipeline_def
def clip_pipeline(infos, size, span, stride, shard_id, num_shards, shuffle_seed, buffer, decoder,
                  windows_per_clip, clip_frames, stored_size):
    """``span`` frames (at ``stride``) from a random start, ``windows x span`` frames ``(C, H, W)``
    per clip (one resize for all), and the frames decoded for it.

    ``clip_frames`` (every clip's length, 0 when they differ) lets one window stop the decoder
    after its last frame; otherwise the whole clip is decoded and ``windows_per_clip`` windows
    are cut from it.
    """
    video = _reader(infos, exts=[VIDEO_EXT], shard_id=shard_id, num_shards=num_shards,
                    shuffle=True, seed=shuffle_seed, buffer=buffer)
    extent = (span - 1) * stride + 1
    if windows_per_clip == 1 and clip_frames:
        start = fn.cast(_random_below(clip_frames - extent + 1), dtype=types.INT32)
        clip = fn.decoders.video(video, device=decoder, start_frame=start, sequence_length=span,
                                 stride=stride, pad_mode="none")
        decoded = start + extent  # forward from the clip's first frame (see the module docstring)
        clips = [clip]
    else:
        frames = fn.decoders.video(video, device=decoder)
        decoded = frames.shape(device="cpu")[0]
        clips = _windows(frames, windows_per_clip, extent, stride)
    frames = fn.cat(*clips) if len(clips) > 1 else clips[0]
    return _to_float(_resized(frames, size, stored_size), "FCHW"), fn.cast(decoded, dtype=types.INT64)


@pipeline_def
def donor_pipeline(infos, size, shard_id, num_shards, shuffle_seed, buffer, decoder,
                   windows_per_clip, clip_frames, stored_size):
    """``windows_per_clip`` random frames of each clip, ``(frames, C, H, W)``, and the frames decoded."""
    video = _reader(infos, exts=[VIDEO_EXT], shard_id=shard_id, num_shards=num_shards,
                    shuffle=True, seed=shuffle_seed, buffer=buffer)
    if windows_per_clip == 1 and clip_frames:
        start = fn.cast(_random_below(clip_frames), dtype=types.INT32)
        picked = [fn.decoders.video(video, device=decoder, start_frame=start, sequence_length=1,
                                    pad_mode="none")]
        decoded = start + 1
    else:
        frames = fn.decoders.video(video, device=decoder)
        decoded = frames.shape(device="cpu")[0]
        picked = _windows(frames, windows_per_clip, 1, 1)
    frames = fn.cat(*picked) if len(picked) > 1 else picked[0]
    return _to_float(_resized(frames, size, stored_size), "FCHW"), fn.cast(decoded, dtype=types.INT64)


@pipeline_def
def eval_pipeline(infos, size, shard_id, num_shards, decoder):
    """Whole clips in stored (video) order, with their metadata."""
    video, meta = _reader(infos, exts=[VIDEO_EXT, META_EXT], shard_id=shard_id, num_shards=num_shards,
                          shuffle=False, seed=0, buffer=1, stick_to_shard=True)
    frames = fn.decoders.video(video, device=decoder)
    frames = fn.resize(frames, size=list(size))
    return _to_float(frames, "FCHW"), meta


def _part_size(total: int, shard_id: int, num_shards: int) -> int:
    """Samples of the rank's part: DALI splits the set into contiguous ranges."""
    return total * (shard_id + 1) // num_shards - total * shard_id // num_shards


def _check_rank(shard_id: int, num_shards: int) -> None:
    if not 0 <= shard_id < num_shards:
        raise ShardError(f"shard_id {shard_id}: expected 0 <= shard_id < num_shards={num_shards}")


# -- the loaders the training loop uses ---------------------------------------------------------------

def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a CPU batch bound for CUDA goes through pinned memory, asynchronously.

    Pageable memory makes the copy synchronous (the host waits for the GPU); a pinned one lets
    the next batch's decoding overlap the step. The caching host allocator keeps the pinned
    block alive until the copy is done.
    """
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def uniform_clip_frames(infos: list[ShardInfo]) -> int:
    """The frame count every clip of a training set holds, or 0 when it may vary.

    The builder cuts training videos into clips of exactly ``clip_len`` frames (test sets end a
    video with a shorter clip), so a training set's first clips tell the length of all of them.
    """
    lengths = {i.first.num_frames for i in infos}
    if len(lengths) == 1 and all(i.first.split == "train" for i in infos):
        return lengths.pop()
    return 0


def stored_size(infos: list[ShardInfo]) -> tuple[int, int] | None:
    """The (H, W) every clip of the set is stored at, or None when shards differ."""
    sizes = {tuple(i.first.size) for i in infos}
    return sizes.pop() if len(sizes) == 1 else None


class _RandomLoader:
    """What ClipLoader and DonorLoader share: a shuffled, padded DALI pipeline iterated forever.

    With several windows per decoded clip, the windows wait in a pool of ``2 x batch x windows``
    and each batch draws from it at random, so that a batch mixes windows of many clips.
    ``frames_decoded`` / ``items_delivered`` is the decoding cost of one delivered item.
    """

    def __init__(self, shards, pipeline, pipe_kwargs, *, batch_size, shard_id, num_shards, seed,
                 device, threads, shuffle_buffer, windows_per_clip, extent, window_decode, item_shape):
        _check_rank(shard_id, num_shards)
        if batch_size < 1:
            raise ShardError(f"batch_size {batch_size}: expected >= 1")
        if windows_per_clip < 0:
            raise ShardError(f"windows_per_clip {windows_per_clip}: expected >= 1, or 0 for as many as fit")
        self.device, device_id = _device(device)
        self.infos = checked_shards(shards, gpu=device_id is not None)
        self.quality = stored_quality(self.infos)  # e.g. "vp9 high"; printed by the commands
        self.batch_size = batch_size
        self.decoder = "mixed" if device_id is not None else "cpu"  # NVDEC on a GPU
        clip_frames = uniform_clip_frames(self.infos) if window_decode else 0
        if windows_per_clip == 0:  # as many disjoint windows as a clip holds
            windows_per_clip = max(1, clip_frames // extent) if clip_frames else 1
        self.windows_per_clip = windows_per_clip
        self._item_shape = item_shape  # (T+1,) for a clip, () for a donor frame
        self.pipe = pipeline(
            self.infos, **pipe_kwargs, shard_id=shard_id, num_shards=num_shards, shuffle_seed=seed,
            buffer=shuffle_buffer, decoder=self.decoder, windows_per_clip=windows_per_clip,
            clip_frames=clip_frames, stored_size=stored_size(self.infos), batch_size=batch_size,
            num_threads=threads, device_id=device_id,
            seed=(seed * 7919 + shard_id) % 2**31)  # ranks draw different starts
        total = sum(i.samples for i in self.infos)
        self.part_size = _part_size(total, shard_id, num_shards)
        # pad_last_batch pads every part to the largest one: the same step count on every rank
        self.steps_per_epoch = math.ceil(math.ceil(total / num_shards) / batch_size) * windows_per_clip
        self.epoch = 0
        self.frames_decoded = self.items_delivered = self.clips_decoded = 0
        self.distinct_clips = 0  # summed over batches: distinct source clips in each
        self._generator = torch.Generator().manual_seed((seed * 7919 + shard_id) % 2**31)
        self._iterator = None

    def _pipeline_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(items, source clip numbers)`` of each pipeline run, forever."""
        if self._iterator is None:
            self._iterator = DALIGenericIterator([self.pipe], ["x", "decoded"], reader_name=READER,
                                                 last_batch_policy=LastBatchPolicy.FILL, auto_reset=True)
        while True:  # forever; the reader reshuffles its shard order at each epoch
            for batch in self._iterator:
                x, decoded = batch[0]["x"], batch[0]["decoded"]
                self.frames_decoded += int(decoded.sum())
                clips = torch.arange(self.clips_decoded, self.clips_decoded + len(x))
                self.clips_decoded += len(x)
                x = x.view(-1, *self._item_shape, *x.shape[-3:])  # (B * windows, [T+1,] C, H, W)
                yield to_device(x, self.device), clips.repeat_interleave(len(x) // len(clips))
            self.epoch += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = self._pipeline_batches()
        if self.windows_per_clip == 1:
            for x, _ in batches:
                self.items_delivered += len(x)
                self.distinct_clips += len(x)
                yield x
            return
        # Each batch is a uniform random draw, without replacement, from the windows waiting in
        # the pool. Only the drawn windows are copied; the pool is compacted (the windows left,
        # then the new ones) when it is refilled, once every ``windows_per_clip`` batches.
        pool_size = 2 * self.batch_size * self.windows_per_clip
        pool, sources, waiting = None, None, torch.zeros(0, dtype=torch.long)
        while True:
            while len(waiting) < pool_size:
                x, clips = next(batches)
                if pool is None:
                    pool, sources = x, clips
                else:
                    pool = torch.cat([pool[waiting.to(pool.device)], x])
                    sources = torch.cat([sources[waiting], clips])
                waiting = torch.arange(len(pool))
            order = torch.randperm(len(waiting), generator=self._generator)
            take, waiting = waiting[order[:self.batch_size]], waiting[order[self.batch_size:]]
            self.items_delivered += len(take)
            self.distinct_clips += len(set(sources[take].tolist()))
            yield pool[take.to(pool.device)]


class ClipLoader(_RandomLoader):
    """Training clips ``(B, T+1, 3, H, W)`` in [-1, 1] on ``device``, iterable forever.

    Args:
        shards: tar paths or s3:// URLs (``resolve_shards``), checked here, or the ``ShardInfo`` s
            of shards checked before (``check_shards``), taken as they are.
        batch_size: clips per batch (per rank).
        clip_len: T+1, the consecutive frames of each returned clip.
        size: (H, W) of the output frames.
        stride: temporal stride between the frames.
        shard_id, num_shards: this rank's part of the set (disjoint parts, equal step counts).
        seed: shuffle and random starts; the shard order reshuffles each epoch from it.
        device: "cpu" or a CUDA device; CUDA decodes with NVDEC ("mixed").
        threads: DALI worker threads.
        shuffle_buffer: samples in the reader's shuffle buffer.
        windows_per_clip: windows cut from each decoded clip (0: as many disjoint ones as fit);
            1 decodes only up to the window's last frame.
        window_decode: False decodes every frame of every clip for one window, as the loader
            did before (the benchmark's baseline).
    """

    def __init__(self, shards: list[str] | list[ShardInfo], *, batch_size: int, clip_len: int, size: tuple[int, int],
                 stride: int = 1, shard_id: int = 0, num_shards: int = 1, seed: int = 0,
                 device: str | torch.device = "cpu", threads: int = 2, shuffle_buffer: int = 256,
                 windows_per_clip: int = 1, window_decode: bool = True):
        if clip_len < 1 or stride < 1:
            raise ShardError(f"clip_len {clip_len}, stride {stride}: expected both >= 1")
        span = (clip_len - 1) * stride + 1
        super().__init__(shards, clip_pipeline, dict(size=tuple(size), span=clip_len, stride=stride),
                         batch_size=batch_size, shard_id=shard_id, num_shards=num_shards, seed=seed,
                         device=device, threads=threads, shuffle_buffer=shuffle_buffer,
                         windows_per_clip=windows_per_clip, extent=span, window_decode=window_decode,
                         item_shape=(clip_len,))
        for info in self.infos:
            if info.first.num_frames < span:
                raise ShardError(f"shard {info.path}: clips hold {info.first.num_frames} frames, fewer "
                                 f"than the {span} that {clip_len} frames at stride {stride} span; re-shard "
                                 "with a larger --clip-len")


class DonorLoader(_RandomLoader):
    """Single donor frames ``(B, 3, H, W)`` in [-1, 1] for O, iterable forever.

    Takes the arguments of :class:`ClipLoader` without ``clip_len`` and ``stride``; the donor set may
    be the training set (VAD only, TI only) or another one (VAD+TI). ``windows_per_clip`` frames
    are taken from each decoded clip (0 counts as 1 here).
    """

    def __init__(self, shards: list[str] | list[ShardInfo], *, batch_size: int, size: tuple[int, int], shard_id: int = 0,
                 num_shards: int = 1, seed: int = 0, device: str | torch.device = "cpu",
                 threads: int = 2, shuffle_buffer: int = 256, windows_per_clip: int = 1,
                 window_decode: bool = True):
        super().__init__(shards, donor_pipeline, dict(size=tuple(size)), batch_size=batch_size,
                         shard_id=shard_id, num_shards=num_shards, seed=seed, device=device,
                         threads=threads, shuffle_buffer=shuffle_buffer,
                         windows_per_clip=max(1, windows_per_clip), extent=1, window_decode=window_decode,
                         item_shape=())


# -- ordered evaluation ---------------------------------------------------------------------------------

@dataclass
class EvalClip:
    """One test clip: its frames in [-1, 1], per-frame 0/1 labels and where it sits in its video."""

    video_id: str
    first_frame: int
    frames: torch.Tensor  # (L, 3, H, W)
    labels: torch.Tensor  # (L,) uint8
    video_frames: int
    last_clip: bool


def _to_torch(tensor, device: torch.device) -> torch.Tensor:
    """One DALI sample (CPU or GPU) as a torch tensor on ``device``."""
    if device.type == "cuda":
        out = torch.empty(tensor.shape(), dtype=torch.float32, device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(tensor))


class EvalLoader:
    """Test clips in stored (video) order, each exactly once, padding duplicates dropped.

    With ``num_shards`` > 1 each rank gets a contiguous run of clips; a video may then span two
    ranks, so gather per-video results before normalising scores.

    Args:
        shards: test shard paths (``resolve_shards``) or checked ``ShardInfo`` s, in manifest order.
        size: (H, W) of the output frames.
        device: "cpu" or a CUDA device ("mixed" decoding).
        threads: DALI worker threads.
        shard_id, num_shards: this rank's part.
        batch_size: clips decoded per pipeline run (a throughput knob; clips come one by one).
    """

    def __init__(self, shards: list[str] | list[ShardInfo], *, size: tuple[int, int], device: str | torch.device = "cpu",
                 threads: int = 2, shard_id: int = 0, num_shards: int = 1, batch_size: int = 4):
        _check_rank(shard_id, num_shards)
        self.device, self.device_id = _device(device)
        self.infos = checked_shards(shards, gpu=self.device_id is not None)
        self.quality = stored_quality(self.infos)  # e.g. "vp9 lossless"; lossy test sets blur scores
        self.size, self.threads, self.batch_size = tuple(size), threads, batch_size
        self.shard_id, self.num_shards = shard_id, num_shards
        self.part_size = _part_size(sum(i.samples for i in self.infos), shard_id, num_shards)

    def __len__(self) -> int:
        return self.part_size

    def __iter__(self) -> Iterator[EvalClip]:
        # A fresh pipeline per pass, so that every pass starts at the start of this rank's part.
        pipe = eval_pipeline(self.infos, self.size, self.shard_id, self.num_shards,
                             "mixed" if self.device_id is not None else "cpu",
                             batch_size=self.batch_size, num_threads=self.threads,
                             device_id=self.device_id, prefetch_queue_depth=1)
        pipe.build()
        left, previous = self.part_size, None
        try:
            while left > 0:
                frames, metas = pipe.run()
                for i in range(min(len(metas), left)):  # past `left` come pad_last_batch repeats
                    meta = ClipMeta.from_json(np.array(metas[i]).tobytes())
                    key = (meta.video_id, meta.first_frame)
                    if key == previous:  # a repeat can only be padding: keys are unique
                        continue
                    previous = key
                    yield self._clip(meta, _to_torch(frames[i], self.device))
                left -= len(metas)
        finally:
            del pipe

    def _clip(self, meta: ClipMeta, frames: torch.Tensor) -> EvalClip:
        labels = meta.labels if meta.labels else [0] * len(frames)
        if len(labels) != len(frames):
            raise ShardError(f"clip {meta.video_id}@{meta.first_frame}: {len(labels)} labels for "
                             f"{len(frames)} decoded frames; rebuild the test shards")
        return EvalClip(meta.video_id, meta.first_frame, frames,
                        torch.tensor(labels, dtype=torch.uint8, device=self.device),
                        meta.video_frames or meta.first_frame + len(frames), meta.last_clip)
