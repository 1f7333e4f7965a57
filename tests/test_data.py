"""zxvad.data: DALI loaders on tiny shards whose frames carry their own index.

Every frame is split in two flat halves: the left half's gray level is 8 * (frame index in its
video), the right half's is 40 + 24 * (video number). Both survive lossy coding and resizing to
within a few levels, so a batch tells which video and which frames it holds.
"""

import os
import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from shards.encode import encode_clip
from shards.format import ClipMeta, index_name, sample_key, video_hash
from shards.writer import write_tar
from zxvad.data import (ClipLoader, DonorLoader, EvalLoader, ShardError, iterate_videos,
                        prediction_windows, resolve_shards)

from helpers import SIZE, TRAIN_VIDEOS, built_set, label_of, pattern, read_pattern


def write_set(out: Path, clips: list[tuple[ClipMeta, bytes]], per_shard: int) -> Path:
    """Tars, indexes and a manifest through shards.writer (the builder's writer)."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, start in enumerate(range(0, len(clips), per_shard)):
        name = f"clips-{n:06d}.tar"
        chunk = clips[start:start + per_shard]
        samples = [(sample_key(m.dataset, m.video_id, m.first_frame), [("mkv", data), ("json", m.to_json())])
                   for m, data in chunk]
        (out / index_name(name)).write_text(write_tar(out / name, samples))
        entries.append({"name": name, "samples": len(chunk), "hash_max": (n + 1) / 10})
    (out / "manifest.json").write_text(json.dumps({"dataset": "pattern", "shards": entries}))
    return out


@pytest.fixture(scope="module")
def train_set(tmp_path_factory) -> Path:
    # 8 videos of one 12-frame clip each, at most 3 clips per shard.
    return built_set(tmp_path_factory.mktemp("train"), [12] * TRAIN_VIDEOS, "train", "vp9", clip_len=12)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    # 3 videos of 11, 7 and 14 frames in clips of 6 overlapping by T=2: 3 + 2 + 3 clips.
    return built_set(tmp_path_factory.mktemp("test"), [11, 7, 14], "test", "mjpeg", clip_len=6, overlap=2)


def test_loaders_take_shards_checked_before_without_opening_them_again(train_set, test_set, monkeypatch):
    """The training driver checks every shard once; a worker's loaders trust its ShardInfos."""
    from zxvad.data import check_shards, shardset

    train_infos = check_shards(resolve_shards(str(train_set)), gpu=False)
    test_infos = check_shards(resolve_shards(str(test_set)), gpu=False)
    opened = []
    monkeypatch.setattr(shardset, "read_bytes", lambda *a, **k: opened.append(a) or pytest.fail("re-read"))
    clips = ClipLoader(train_infos, batch_size=2, clip_len=3, size=(8, 8), threads=1, shuffle_buffer=4)
    donors = DonorLoader(train_infos, batch_size=2, size=(8, 8), threads=1, shuffle_buffer=4)
    evaluation = EvalLoader(test_infos, size=(8, 8), threads=1)
    assert clips.infos == donors.infos == train_infos and evaluation.infos == test_infos and not opened
    assert next(iter(clips)).shape == (2, 3, 3, 8, 8) and len(evaluation) == 8


def test_clip_loader_shapes_range_and_consecutive_frames(train_set):
    loader = ClipLoader(resolve_shards(str(train_set)), batch_size=4, clip_len=5, size=(24, 40),
                        threads=1, shuffle_buffer=8)
    assert loader.decoder == "cpu"
    batches = [batch for batch, _ in zip(loader, range(4))]
    for x in batches:
        assert x.shape == (4, 5, 3, 24, 40) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert x.min() >= -1 and x.max() <= 1
        index, video = read_pattern(x)
        assert (index.diff(dim=1) == 1).all(), index  # T+1 consecutive frames
        assert (index >= 0).all() and (index <= 11).all()
        assert (video == video[:, :1]).all() and set(video[:, 0].tolist()) <= set(range(8))
    starts = torch.cat([read_pattern(x)[0][:, 0] for x in batches])
    assert len(set(starts.tolist())) > 1  # random starts, not always the first frame


def test_clip_loader_stride(train_set):
    loader = ClipLoader(resolve_shards(str(train_set)), batch_size=4, clip_len=4, size=SIZE, stride=3,
                        threads=1, shuffle_buffer=8)
    x = next(iter(loader))
    index, _ = read_pattern(x)
    assert (index.diff(dim=1) == 3).all(), index
    assert index.max() <= 11


def test_two_ranks_see_disjoint_parts_covering_the_set(train_set):
    shards = resolve_shards(str(train_set))
    seen = []
    for rank in range(2):
        loader = ClipLoader(shards, batch_size=3, clip_len=2, size=SIZE, shard_id=rank, num_shards=2,
                            threads=1, seed=5, shuffle_buffer=4)
        assert loader.steps_per_epoch == 2  # 4 clips per rank, padded to full batches
        it = iter(loader)
        videos = torch.cat([read_pattern(next(it))[1][:, 0] for _ in range(loader.steps_per_epoch)])
        seen.append(set(videos.tolist()))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(8))


def test_uneven_parts_run_the_same_number_of_steps(train_set):
    shards = resolve_shards(str(train_set))
    for rank in range(3):  # 8 clips over 3 ranks: parts of 2, 3 and 3, all padded to 2 batches of 2
        loader = ClipLoader(shards, batch_size=2, clip_len=2, size=(8, 8), shard_id=rank, num_shards=3, threads=1)
        assert (loader.part_size, loader.steps_per_epoch) == ((2, 3, 3)[rank], 2)
        it = iter(loader)
        for _ in range(2):
            next(it)
        assert loader.epoch == 0
        next(it)
        assert loader.epoch == 1  # the third batch opens the next epoch on every rank


def test_donor_loader_single_frames(train_set):
    loader = DonorLoader(resolve_shards(str(train_set)), batch_size=5, size=(16, 16), threads=1,
                         shuffle_buffer=8)
    x = next(iter(loader))
    assert x.shape == (5, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    index, video = read_pattern(x)
    assert set(index.tolist()) <= set(range(12)) and set(video.tolist()) <= set(range(8))


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_eval_loader_yields_each_scorable_frame_once_with_its_label(test_set, num_shards):
    shards = resolve_shards(str(test_set))
    T = 2
    seen: dict[str, list[int]] = {}
    for rank in range(num_shards):
        loader = EvalLoader(shards, size=(16, 24), threads=1, shard_id=rank, num_shards=num_shards,
                            batch_size=3)  # 8 clips: parts of 8, 4+4 or 2+3+3, padded batches
        clips = list(loader)
        assert len(clips) == len(loader)
        for clip in clips:
            windows, indices, labels = prediction_windows(clip, T)
            assert windows.shape == (len(clip.frames) - T, T + 1, 3, 16, 24)
            frame_index, video = read_pattern(windows)
            assert (frame_index == indices[:, None] + torch.arange(-T, 1)).all()  # in video order
            assert (video == int(clip.video_id[1:])).all()
            assert labels.tolist() == [label_of(int(clip.video_id[1:]), i) for i in indices.tolist()]
            seen.setdefault(clip.video_id, []).extend(indices.tolist())
    assert seen == {"v0": list(range(T, 11)), "v1": list(range(T, 7)), "v2": list(range(T, 14))}


def test_iterate_videos_groups_windows_in_order(test_set):
    loader = EvalLoader(resolve_shards(str(test_set)), size=SIZE, threads=1, batch_size=4)
    grouped = [(vid, torch.cat([idx for _, idx, _ in windows]).tolist()) for vid, windows in iterate_videos(loader, 2)]
    assert grouped == [("v0", list(range(2, 11))), ("v1", list(range(2, 7))), ("v2", list(range(2, 14)))]


def test_fraction_takes_the_manifest_prefix_holding_its_videos(train_set):
    manifest = json.loads((train_set / "manifest.json").read_text())
    names = [s["name"] for s in manifest["shards"]]
    half = resolve_shards(str(train_set), 0.5)
    assert [Path(p).name for p in half] == names[:len(half)] and 0 < len(half) < len(names)
    assert len(resolve_shards(str(train_set / "manifest.json"), 1.0)) == len(names)
    expected = {v for v in range(TRAIN_VIDEOS) if video_hash(f"v{v}") < 0.5}
    loader = DonorLoader(half, batch_size=len(expected), size=SIZE, threads=1, shuffle_buffer=1)
    assert loader.part_size == len(expected)
    assert set(read_pattern(next(iter(loader)))[1].tolist()) == expected
    lowest = min(video_hash(f"v{v}") for v in range(TRAIN_VIDEOS))
    with pytest.raises(ShardError, match=f"no shard within fraction {lowest / 2}"):
        resolve_shards(str(train_set), lowest / 2)


# -- bad input ----------------------------------------------------------------------------------------

def test_empty_shard_list_and_missing_manifest(tmp_path):
    with pytest.raises(ShardError, match="shard list is empty"):
        ClipLoader([], batch_size=2, clip_len=2, size=SIZE)
    with pytest.raises(ShardError, match=f"shards {tmp_path}: no manifest.json .*shards.build"):
        resolve_shards(str(tmp_path))


def test_missing_index_names_shard_and_remedy(train_set, tmp_path):
    shutil.copytree(train_set, tmp_path / "s")
    (tmp_path / "s" / "clips-000001.idx").unlink()  # the second shard
    tar = str(tmp_path / "s" / "clips-000001.tar")
    with pytest.raises(ShardError, match=rf"shard {tar}: DALI index .*clips-000001.idx is missing; .*wds2idx"):
        DonorLoader(resolve_shards(str(tmp_path / "s")), batch_size=2, size=SIZE)


def test_shard_without_expected_entries(tmp_path):
    meta = ClipMeta("pattern", "v0", 0, 4, 25.0, list(SIZE), list(SIZE), "train", "vp9")
    tar = tmp_path / "bad-000000.tar"
    (tmp_path / "bad-000000.idx").write_text(write_tar(tar, [("a", [("json", meta.to_json())])]))
    with pytest.raises(ShardError, match=rf"shard {tar}: sample 0 lacks its .mkv entry"):
        ClipLoader([str(tar)], batch_size=2, clip_len=2, size=SIZE)


def _h264_clip(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def h264_set(tmp_path_factory) -> Path:
    clips = []
    for video in range(2):
        meta = ClipMeta("pattern", f"v{video}", 0, 8, 25.0, list(SIZE), list(SIZE), "train", "h264")
        clips.append((meta, _h264_clip(pattern(video, range(8)))))
    return write_set(tmp_path_factory.mktemp("h264"), clips, per_shard=2)


def test_h264_on_cpu_names_shard_and_remedy(h264_set):
    tar = str(h264_set / "clips-000000.tar")
    with pytest.raises(ShardError, match=rf"shard {tar}: clips are h264, .*CPU decoder.*--codec vp9.*GPU"):
        ClipLoader(resolve_shards(str(h264_set)), batch_size=2, clip_len=2, size=SIZE, device="cpu")


def test_short_clips_name_the_clip_length(train_set):
    with pytest.raises(ShardError, match="clips hold 12 frames, fewer than the 13"):
        ClipLoader(resolve_shards(str(train_set)), batch_size=2, clip_len=5, stride=3, size=SIZE)


@pytest.mark.gpu  # the 'mixed' (NVDEC) decoder needs a GPU
def test_gpu_decodes_with_mixed_backend_including_h264(train_set, h264_set):
    for shards in (train_set, h264_set):
        loader = ClipLoader(resolve_shards(str(shards)), batch_size=2, clip_len=4, size=(24, 24),
                            device="cuda", threads=1, shuffle_buffer=4)
        assert loader.decoder == "mixed"
        x = next(iter(loader))
        assert x.device.type == "cuda" and x.shape == (2, 4, 3, 24, 24)
        index, _ = read_pattern(x.cpu())
        assert (index.diff(dim=1) == 1).all()
    clips = list(EvalLoader(resolve_shards(str(h264_set)), size=SIZE, device="cuda", threads=1))
    assert [c.frames.device.type for c in clips] == ["cuda", "cuda"]


def test_real_footage_round_trip(real_clips, tmp_path):
    """Real H.264 and Cinepak sources, sharded as VP9, decode to moving, full-range frames."""
    from shards.build import build

    root = tmp_path / "videos"
    root.mkdir()
    for name in ("carphone.mp4", "tree_window.avi"):
        (root / name).symlink_to(real_clips / name)
    build("videofolder", root, tmp_path / "shards", size=(48, 64), clip_len=8, progress=False)
    loader = ClipLoader(resolve_shards(str(tmp_path / "shards")), batch_size=4, clip_len=5, size=(48, 64),
                        threads=1, shuffle_buffer=16)
    x = next(iter(loader))
    assert x.shape == (4, 5, 3, 48, 64) and x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.1  # real content, not a flat frame
    # Frame alignment: a stored clip matches the source frames it names, better than their neighbours.
    clip = next(c for c in EvalLoader(resolve_shards(str(tmp_path / "shards")), size=(48, 64), threads=1)
                if c.video_id == "carphone" and c.first_frame > 0)
    with av.open(str(real_clips / "carphone.mp4")) as container:
        source = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    source = torch.from_numpy(np.stack(source)).permute(0, 3, 1, 2).float()
    source = torch.nn.functional.interpolate(source, size=(48, 64), mode="area") / 127.5 - 1
    first = clip.first_frame
    error = [(clip.frames[:4] - source[first + k:first + k + 4]).abs().mean().item() for k in (-1, 0, 1)]
    assert error[1] < 0.08 and error[1] < min(error[0], error[2]), error


def test_relative_shard_set_resolves_to_absolute_paths(train_set, monkeypatch):
    # Ray workers run in another working folder: the driver must hand them absolute paths.
    monkeypatch.chdir(train_set.parent)
    shards = resolve_shards(train_set.name)
    assert shards and all(os.path.isabs(s) and os.path.exists(s) for s in shards)


# -- decoding only what a batch uses ----------------------------------------------------------------

def _starts(loader, batches: int) -> torch.Tensor:
    it = iter(loader)
    return torch.cat([read_pattern(next(it))[0][:, 0] for _ in range(batches)])


@pytest.mark.parametrize("windows", [1, 0])
def test_window_starts_keep_the_whole_clip_reads_distribution(train_set, windows):
    """What the model sees does not change: every window starts uniformly over the clip's 8 valid
    starts (12 frames, 5 kept), as with the earlier loader that decoded every frame."""
    shards = resolve_shards(str(train_set))
    common = dict(batch_size=8, clip_len=5, size=SIZE, threads=1, shuffle_buffer=8, seed=3)
    before = _starts(ClipLoader(shards, window_decode=False, **common), 60)
    after = _starts(ClipLoader(shards, windows_per_clip=windows, **common), 60)
    for starts in (before, after):
        counts = torch.bincount(starts, minlength=8).float()
        assert len(counts) == 8  # no start past 12 - 5
        expected = len(starts) / 8
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 24.3, counts  # 7 degrees of freedom: p = 0.001
    # the two samples come from one distribution: their histograms differ by noise only
    diff = (torch.bincount(before, minlength=8) - torch.bincount(after, minlength=8)).abs().max()
    assert diff < 4 * (480 / 8) ** 0.5


def test_one_window_stops_decoding_after_it_and_several_share_one_decode(train_set):
    shards = resolve_shards(str(train_set))
    common = dict(batch_size=4, clip_len=5, size=SIZE, threads=1, shuffle_buffer=8)
    whole = ClipLoader(shards, window_decode=False, **common)
    single = ClipLoader(shards, windows_per_clip=1, **common)
    shared = ClipLoader(shards, windows_per_clip=0, **common)
    assert (whole.windows_per_clip, single.windows_per_clip, shared.windows_per_clip) == (1, 1, 2)
    for loader in (whole, single, shared):
        _starts(loader, 20)
    assert whole.frames_decoded == 12 * whole.items_delivered  # every frame of each clip
    per_item = single.frames_decoded / single.items_delivered  # start + 5, start uniform in 0..7
    assert 7.5 < per_item < 9.5 and single.clips_decoded == single.items_delivered
    # 2 windows per decoded clip: 6 frames an item; the pool holds 2 batches' clips beyond these
    assert shared.frames_decoded == 12 * shared.clips_decoded
    assert shared.clips_decoded * 2 >= shared.items_delivered >= shared.clips_decoded * 2 - 16
    assert shared.distinct_clips / 20 > 3  # a batch of 4 mixes windows of several clips


def test_several_windows_per_clip_are_consecutive_frames_of_one_video(train_set):
    loader = ClipLoader(resolve_shards(str(train_set)), batch_size=4, clip_len=3, size=SIZE, stride=2,
                        windows_per_clip=0, threads=1, shuffle_buffer=8)
    assert loader.windows_per_clip == 2  # 12 frames hold two windows of 5 at stride 2
    it = iter(loader)
    for _ in range(6):
        index, video = read_pattern(next(it))
        assert (index.diff(dim=1) == 2).all(), index
        assert (video == video[:, :1]).all() and index.min() >= 0 and index.max() <= 11


def test_donor_frames_from_a_partial_decode_or_several_per_clip(train_set):
    shards = resolve_shards(str(train_set))
    for windows in (1, 3):
        loader = DonorLoader(shards, batch_size=6, size=SIZE, threads=1, shuffle_buffer=8, windows_per_clip=windows)
        frames = torch.cat([read_pattern(x)[0] for x, _ in zip(loader, range(30))])
        assert frames.shape == (180,) and set(frames.tolist()) == set(range(12))  # every frame is drawn
        if windows == 1:  # start + 1 frames, start uniform in 0..11: 6.5 a donor, 12 before
            assert 5.5 < loader.frames_decoded / loader.items_delivered < 7.5
        else:  # 4 a donor; the pool holds up to 2 batches' clips not delivered yet
            assert loader.frames_decoded == 12 * loader.clips_decoded
            assert 3 * loader.clips_decoded - 36 <= loader.items_delivered <= 3 * loader.clips_decoded


def test_uniform_clip_frames_only_for_training_sets(train_set, test_set):
    from zxvad.data import check_shards
    from zxvad.data.pipelines import uniform_clip_frames

    assert uniform_clip_frames(check_shards(resolve_shards(str(train_set)), gpu=False)) == 12
    assert uniform_clip_frames(check_shards(resolve_shards(str(test_set)), gpu=False)) == 0  # last clips are shorter


class _FakeS3:
    """A boto3 client double whose ``get_object`` returns ``answer`` (bytes) or raises it (an error)."""

    def __init__(self, answer):
        self.answer = answer

    def get_object(self, Bucket, Key, **extra):
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"Body": io.BytesIO(self.answer)}


def _client_error(code, status):
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_s3_reads_tell_an_outage_from_a_missing_object(monkeypatch):
    """A missing object or absent credentials are a bad shard set (ShardError: not retried); a
    store that does not answer is StorageUnreachable, not a ValueError, so Ray Train retries the run
    (a restarted S3 server was once reported as "no manifest.json" and the run stopped for good)."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from zxvad.data import shardset
    from zxvad.run.launch import PERMANENT_ERRORS

    monkeypatch.setattr(shardset, "_s3_client", lambda: _FakeS3(b'{"shards": []}'))
    assert shardset.load_manifest("s3://b/set")[0] == {"shards": []}
    for answer in (_client_error("NoSuchKey", 404), _client_error("403", 403), NoCredentialsError()):
        monkeypatch.setattr(shardset, "_s3_client", lambda answer=answer: _FakeS3(answer))
        with pytest.raises(ShardError, match="no manifest.json found"):
            shardset.load_manifest("s3://b/set")
    for outage in (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), _client_error("InternalError", 503)):
        monkeypatch.setattr(shardset, "_s3_client", lambda outage=outage: _FakeS3(outage))
        with pytest.raises(shardset.StorageUnreachable, match="shards s3://b/set: .*(cannot reach S3|InternalError)") as caught:
            shardset.load_manifest("s3://b/set")
        assert not isinstance(caught.value, PERMANENT_ERRORS)


def test_a_worker_waits_for_an_unreachable_store_before_the_retry(monkeypatch):
    """After a DALI error the worker re-checks the sets: a damaged set is a ShardError, a store
    that is down is waited for (so that Ray Train's retry finds it back), then no verdict."""
    from zxvad.data.shardset import StorageUnreachable
    from zxvad.run import worker

    answers, sleeps = [], []
    def verify(spec, fraction):
        answer = answers.pop(0)
        if answer is not None:
            raise answer
    monkeypatch.setattr(worker, "verify_shard_set", verify)
    monkeypatch.setattr(worker.time, "sleep", sleeps.append)
    inputs = type("Inputs", (), {"sets": [("s3://b/set", 1.0)]})()

    answers[:] = [StorageUnreachable("down"), StorageUnreachable("down"), None]
    assert worker.shard_defect(inputs, wait_s=60) is None and answers == [] and len(sleeps) == 2
    damaged = ShardError("shard s3://b/set/x-000000.tar: truncated")
    answers[:] = [StorageUnreachable("down"), damaged]
    assert worker.shard_defect(inputs, wait_s=60) is damaged
    sleeps.clear()
    answers[:] = [StorageUnreachable("down")] * 3
    assert worker.shard_defect(inputs, wait_s=0) is None and sleeps == []


def test_window_pool_delivers_each_window_once_drawn_from_the_whole_pool():
    """The pool behind several windows per clip: every window cut is delivered at most once,
    batches are uniform draws from everything waiting (a window can wait several batches), and
    only the pool's remainder is never delivered."""
    from zxvad.data.pipelines import _RandomLoader

    batch, windows = 4, 3
    loader = object.__new__(_RandomLoader)
    loader.batch_size, loader.windows_per_clip = batch, windows
    loader.items_delivered = loader.distinct_clips = 0
    loader._generator = torch.Generator().manual_seed(0)
    made = []

    def pipeline_batches():
        for run in range(60):
            ids = torch.arange(len(made), len(made) + batch * windows)
            made.extend(ids.tolist())
            clips = torch.arange(run * batch, (run + 1) * batch).repeat_interleave(windows)
            yield ids.float().view(-1, 1), clips
    loader._pipeline_batches = pipeline_batches
    delivered, waits = [], []
    iterator = iter(loader)
    for _ in range(150):
        items = next(iterator).view(-1).long().tolist()
        waits += [len(delivered) // batch - item // (batch * windows) for item in items]
        delivered += items
    assert len(delivered) == len(set(delivered)) == 150 * batch == loader.items_delivered
    assert set(delivered) <= set(made) and len(made) - len(delivered) <= 3 * batch * windows
    assert max(waits) > 2 * windows  # some windows wait long: the draw is over the whole pool
    assert 1 < loader.distinct_clips / 150 <= batch
