"""shards.build / writer / encode: every layout round-trips through tars, webdataset and CPU DALI."""

from __future__ import annotations

import bisect
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from layouts import LAYOUTS, frame_level, write_layout, write_video
from shards import windows
from shards.build import build, main, parse_size
from shards.encode import encode_clip, resize_frame
from shards.format import FRACTION_CUTS, MANIFEST_NAME, VIDEO_EXT, ClipMeta, shards_for_fraction, video_hash
from shards.readers import list_videos
from shards.writer import BuildError, sha256_file, write_tar

ROOT = Path(__file__).resolve().parents[1]
CLIP, T = 4, 2  # tiny clips so that 10-16 frame fixtures give several each


# ------------------------------------------------------------------------------ helpers

def expected_spans(n: int, split: str, clip_len: int = CLIP, overlap: int = T) -> list[tuple[int, int]]:
    """(first frame, frames) of each clip, written out independently of the builder."""
    if split == "train":
        return [(s, clip_len) for s in range(0, n - clip_len + 1, clip_len)]
    spans, start = [], 0
    while n > overlap:
        end = min(start + clip_len, n)
        spans.append((start, end - start))
        if end == n:
            break
        start = end - overlap
    return spans


def read_webdataset(out: Path, manifest: dict) -> list[tuple[ClipMeta, bytes]]:
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return [(ClipMeta.from_json(s["json"]), s[VIDEO_EXT]) for s in dataset]


def dali_decode(paths: list[str], index_paths: list[str], count: int) -> list[tuple[np.ndarray, ClipMeta]]:
    """Decode ``count`` samples on the CPU with fn.readers.webdataset + fn.decoders.video."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        video, meta = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=[VIDEO_EXT, "json"],
                                            missing_component_behavior="error")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    out = []
    for _ in range(count):
        frames, meta = p.run()
        out.append((np.array(frames[0]), ClipMeta.from_json(bytes(np.array(meta[0])))))
    return out


def dali_decode_manifest(out: Path, manifest: dict) -> list[tuple[np.ndarray, ClipMeta]]:
    shards = manifest["shards"]
    return dali_decode([str(out / s["name"]) for s in shards], [str(out / s["index"]) for s in shards],
                       manifest["totals"]["clips"])


def write_clips_folder(root: Path, lengths: list[int], hw=(24, 32)) -> None:
    for i, n in enumerate(lengths):
        write_video(root / f"v{i:03d}.avi", n, hw=hw)


# ------------------------------------------------------------------------------ encode + index

@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
def test_encode_clip_keeps_every_frame_and_its_content(codec):
    from layouts import make_frame
    frames = [resize_frame(make_frame(i, (48, 64)), (32, 48), codec) for i in range(9)]
    data = encode_clip(frames, codec, fps=29.97)
    decoded = [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(data)).decode(video=0)]
    assert len(decoded) == 9
    assert decoded[0].shape == (32, 48, 3)
    means = [f.mean() for f in decoded]
    expected = [make_frame(i, (48, 64)).mean() for i in range(9)]
    assert np.max(np.abs(np.array(means) - expected)) < 6


def _keyframes(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data)) as container:
        return [i for i, packet in enumerate(container.demux(video=0)) if packet.size and packet.is_keyframe]


def test_keyframe_interval_places_keyframes_exactly():
    from layouts import make_frame
    frames = [resize_frame(make_frame(i, (48, 64)), (32, 48), "vp9") for i in range(16)]
    assert _keyframes(encode_clip(frames, "vp9", quality="lossless")) == [0]  # the clip decodes alone
    assert _keyframes(encode_clip(frames, "vp9", quality="lossless", keyframe_interval=4)) == [0, 4, 8, 12]
    assert _keyframes(encode_clip(frames, "vp9", quality="high", keyframe_interval=16)) == [0]


def test_manifest_records_the_keyframe_interval(tmp_path):
    from helpers import frame_folders
    root = frame_folders(tmp_path / "videos", [10, 10], labelled=False)
    manifest = build("videofolder", root, tmp_path / "a", clip_len=8, size=(16, 16), progress=False)
    assert manifest["options"]["keyframe_interval"] == 8  # one keyframe per clip by default
    manifest = build("videofolder", root, tmp_path / "b", clip_len=8, size=(16, 16), progress=False,
                     keyframe_interval=2)
    assert manifest["options"]["keyframe_interval"] == 2
    tar = tarfile.open(tmp_path / "b" / manifest["shards"][0]["name"])
    clip = next(m for m in tar if m.name.endswith("." + VIDEO_EXT))
    assert _keyframes(tar.extractfile(clip).read()) == [0, 2, 4, 6]
    with pytest.raises(BuildError, match="keyframe_interval 0"):
        build("videofolder", root, tmp_path / "c", clip_len=8, size=(16, 16), progress=False, keyframe_interval=0)


def test_write_tar_writes_what_webdataset_tarwriter_writes_without_importing_torch(tmp_path):
    samples = [(f"k{i}", [(VIDEO_EXT, os.urandom(100 + 700 * i)), ("json", b"{}")]) for i in range(3)]
    samples.append(("k_" + "x" * 150, [("json", b"{}"), (VIDEO_EXT, os.urandom(999))]))  # a GNU long name
    write_tar(tmp_path / "ours.tar", samples)
    with open(tmp_path / "wds.tar", "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as sink:
        sink.tarstream.format = tarfile.GNU_FORMAT
        for key, components in samples:
            sink.write({"__key__": key, **dict(components)})
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()
    # the build's driver writes every tar: torch (via webdataset) would be 525 MB of its memory
    code = ("import sys; from pathlib import Path; from shards.writer import write_tar; "
            f"write_tar(Path({str(tmp_path / 'c.tar')!r}), [('k', [('json', b'{{}}')])]); "
            "import shards.build; print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.stdout.strip() == "False", run.stderr[-500:]


def test_dali_index_equals_wds2idx_and_points_at_the_data(tmp_path):
    from wds2idx import IndexCreator

    samples = [(f"k{i}", [(VIDEO_EXT, os.urandom(100 + 700 * i)), ("json", b"{}")]) for i in range(3)]
    ours = write_tar(tmp_path / "a.tar", samples)
    with IndexCreator(str(tmp_path / "a.tar"), str(tmp_path / "a.idx"), verbose=False) as creator:
        creator.create_index()
    assert ours == (tmp_path / "a.idx").read_text()
    # keys over 100 characters need a GNU long-name header (where wds2idx's offsets are one block off)
    assert tarfile.open(tmp_path / "a.tar").getmembers()[0].uname == "bigdata"  # webdataset.TarWriter's owner
    samples.append(("k_" + "x" * 150, [(VIDEO_EXT, os.urandom(999)), ("json", b"{}")]))
    index = write_tar(tmp_path / "b.tar", samples).splitlines()
    data = (tmp_path / "b.tar").read_bytes()
    assert index[0] == "v1.2 4"
    for line, (key, components) in zip(index[1:], samples):
        fields = line.split()
        entries = {fields[j]: fields[j + 1:j + 4] for j in range(0, len(fields), 4)}
        assert sorted(entries) == sorted(ext for ext, _ in components)
        for ext, payload in components:
            offset, size, name = entries[ext]
            assert name == f"{key}.{ext}" and data[int(offset):int(offset) + int(size)] == payload


# ------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_round_trips(tmp_path, name):
    layout = write_layout(name, tmp_path / "data")
    for split, expected in layout.expected.items():
        out = tmp_path / f"out-{split}"
        manifest = build(layout.dataset, layout.root, out, split=split, clip_len=CLIP, overlap=T,
                         size=(16, 16), codec="vp9" if split == "train" else "mjpeg", progress=False)
        assert manifest["totals"]["videos"] == len(expected)
        for skipped in layout.skipped.get(split, []):
            assert any(skipped in s["input"] for s in manifest["skipped"]), skipped
        clips = read_webdataset(out, manifest)
        want = {(vid, s, c) for vid, e in expected.items() for s, c in expected_spans(e.num_frames, split)}
        assert {(m.video_id, m.first_frame, m.num_frames) for m, _ in clips} == want
        assert len(clips) == len(want) == manifest["totals"]["clips"]
        for meta, _ in clips:
            e = expected[meta.video_id]
            assert meta.size == [16, 16] and meta.split == split and meta.video_frames == e.num_frames
            assert meta.label_class == e.label_class
            if e.labels is not None:  # test labels survive frame for frame
                assert meta.labels == e.labels[meta.first_frame:meta.first_frame + meta.num_frames].tolist()
            if split == "test":
                assert meta.last_clip == (meta.first_frame + meta.num_frames == e.num_frames)
        decoded = dali_decode_manifest(out, manifest)
        assert len(decoded) == len(want)
        for frames, meta in decoded:
            assert frames.shape == (meta.num_frames, 16, 16, 3)
            levels = [frame_level(meta.first_frame + j) for j in range(meta.num_frames)]
            assert np.max(np.abs(frames.reshape(meta.num_frames, -1).mean(1) - levels)) < 8, meta.video_id


def test_test_clips_predict_every_frame_once(tmp_path):
    write_clips_folder(tmp_path / "v", [21, 16, 13, 3])
    manifest = build("videofolder", tmp_path / "v", tmp_path / "o", split="test", clip_len=8, overlap=4,
                     size=(16, 16), progress=False)
    clips = [m for m, _ in read_webdataset(tmp_path / "o", manifest)]
    assert [m.video_id for m in clips] == sorted(m.video_id for m in clips)  # video order kept
    for vid, n in [("v000", 21), ("v001", 16), ("v002", 13)]:
        predicted = [m.first_frame + j for m in clips if m.video_id == vid for j in range(4, m.num_frames)]
        assert sorted(predicted) == list(range(4, n))
    assert manifest["skipped"] == [{"input": str(tmp_path / "v" / "v003.avi"),
                                    "reason": "3 frames, fewer than the 5 a clip needs"}]


# ------------------------------------------------------------------------------ order + fractions

def test_fractions_are_stable_nested_prefixes_and_training_is_shuffled(tmp_path):
    write_clips_folder(tmp_path / "v", [8] * 24, hw=(16, 16))
    kw = dict(clip_len=4, size=(16, 16), max_samples=5, progress=False)
    full = build("videofolder", tmp_path / "v", tmp_path / "full", **kw)
    hashes = sorted(video_hash(f"v{i:03d}") for i in range(24))
    buckets = [bisect.bisect_right(FRACTION_CUTS, s["hash_max"]) for s in full["shards"]]
    assert buckets == sorted(buckets)  # shards in hash order, each within one bucket
    assert buckets == [bisect.bisect_right(FRACTION_CUTS, s["hash_min"]) for s in full["shards"]]
    for cut in FRACTION_CUTS[2:]:
        part = build("videofolder", tmp_path / "v", tmp_path / f"f{cut}", fraction=cut, **kw)
        prefix = shards_for_fraction(full, cut)
        assert [(s["name"], s["sha256"]) for s in part["shards"]] == [(s["name"], s["sha256"]) for s in prefix]
        assert part["totals"]["videos"] == sum(h < cut for h in hashes)
    keys = [m for m, _ in read_webdataset(tmp_path / "full", full)]
    order = [(m.video_id, m.first_frame) for m in keys]
    assert len(order) == 48 and len(set(order)) == 48
    assert order != sorted(order, key=lambda k: (video_hash(k[0]), k))  # shuffled within buckets
    again = build("videofolder", tmp_path / "v", tmp_path / "again", seed=1, **kw)
    assert [s["sha256"] for s in again["shards"]] != [s["sha256"] for s in full["shards"]]


# ------------------------------------------------------------------------------ bad input

def test_corrupt_videos_are_skipped_with_reason(tmp_path):
    write_clips_folder(tmp_path / "v", [9, 9])
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    manifest = build("videofolder", tmp_path / "v", tmp_path / "o", clip_len=4, size=(16, 16), progress=False)
    assert manifest["totals"]["videos"] == 2 and manifest["totals"]["clips"] == 4
    assert manifest["totals"]["skipped"] == 1
    assert manifest["skipped"][0]["input"].endswith("broken.mp4") and manifest["skipped"][0]["reason"]
    on_disk = json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())
    assert on_disk["skipped"] == manifest["skipped"]


def test_labels_that_do_not_match_frames_name_the_video(tmp_path):
    write_clips_folder(tmp_path / "v", [9])
    np.save(tmp_path / "v" / "v000.npy", np.zeros(7, np.uint8))
    with pytest.raises(BuildError, match=r"v000.*7 labels for 9"):
        build("videofolder", tmp_path / "v", tmp_path / "o", split="test", clip_len=4, overlap=2, size=(16, 16),
              progress=False)


@pytest.mark.parametrize("args, message", [
    (["videofolder", "--root", "{tmp}/nope"], "does not exist"),
    (["nosuchset", "--root", "{tmp}/v"], "unknown dataset 'nosuchset'"),
    (["videofolder", "--root", "{tmp}/v", "--codec", "h265"], "codec 'h265': expected one of vp9, mjpeg"),
    (["videofolder", "--root", "{tmp}/v", "--size", "33x20"], "size '33x20'"),
    (["videofolder", "--root", "{tmp}/v", "--size", "big"], "size 'big'"),
    (["videofolder", "--root", "{tmp}/v", "--fraction", "0"], "fraction 0.0"),
    (["videofolder", "--root", "{tmp}/v", "--fraction", "0.000001"], "none of the 1 videos"),
    (["videofolder", "--root", "{tmp}/v", "--out", "{tmp}/file/sub"], "not writable"),
    (["videofolder", "--root", "{tmp}/v", "--quality", "best"], "quality 'best': expected one of lossless, high, compact"),
    (["videofolder", "--root", "{tmp}/v", "--codec", "mjpeg", "--quality", "lossless"], "needs --codec vp9"),
    (["videofolder", "--root", "{tmp}/v", "--fidelity-sample", "2"], "fidelity_sample 2.0: expected in [0, 1]"),
    (["videofolder", "--root", "{tmp}/v", "--fidelity-sample", "most"], "--fidelity-sample: invalid float value"),
])
def test_bad_input_fails_with_one_line(tmp_path, capsys, args, message):
    write_clips_folder(tmp_path / "v", [5])
    (tmp_path / "file").write_text("a file, not a folder")
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    try:
        code = main(argv + ["--quiet"])
    except SystemExit as e:  # argparse's own type checks exit instead of returning
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    if "--out" not in args:
        assert not (tmp_path / "o").exists()  # rejected before any work: nothing written



def test_cli_help_and_error_exit_in_a_subprocess(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "shards.build", "--help"], cwd=ROOT, capture_output=True,
                              text=True)
    assert help_run.returncode == 0 and "--fraction" in help_run.stdout and "s3://" in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "shards.build", "videofolder", "--root", str(tmp_path / "x"),
                          "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_parse_size():
    assert parse_size("128x160") == (128, 160) and parse_size("64") == (64, 64)


# ------------------------------------------------------------------------------ resume

def _check_complete(out: Path, manifest: dict, clips: int) -> None:
    assert manifest["totals"]["clips"] == clips == sum(s["samples"] for s in manifest["shards"])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MANIFEST_NAME] + [s["name"] for s in manifest["shards"]]
                           + [s["index"] for s in manifest["shards"]])  # no .partial, no work folder
    keys = []
    for s in manifest["shards"]:
        assert sha256_file(out / s["name"]) == s["sha256"] and (out / s["name"]).stat().st_size == s["bytes"]
        with tarfile.open(out / s["name"]) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(keys) == len(set(keys)) == clips


@pytest.mark.slow
def test_resume_after_sigkill_finishes_without_duplicates(tmp_path):
    write_clips_folder(tmp_path / "v", [40] * 16, hw=(96, 128))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "shards.build", "videofolder", "--root", str(tmp_path / "v"), "--out", str(out),
           "--clip-len", "4", "--size", "96x128", "--max-samples", "3", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.glob("*.tar")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST_NAME).exists(), "the build finished before it could be interrupted"
    assert list(out.glob("*.tar"))  # it died mid-way, with some shards written
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "(resumed)" in again.stdout
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    # make_frame's brightness wraps every 15 frames: two cuts a video, so clean windows store
    # segments of 15, 15 and 10 frames, 3 + 3 + 2 clips of 4
    _check_complete(out, manifest, 16 * 8)
    clean = build("videofolder", tmp_path / "v", tmp_path / "clean", clip_len=4, size=(96, 128), max_samples=3,
                  progress=False)
    assert manifest["shards"] == clean["shards"]  # same shards, byte for byte, as an uninterrupted build


def test_rerun_of_a_finished_build_changes_nothing(tmp_path):
    write_clips_folder(tmp_path / "v", [8, 8])
    kw = dict(clip_len=4, size=(16, 16), progress=False)
    first = build("videofolder", tmp_path / "v", tmp_path / "o", **kw)
    second = build("videofolder", tmp_path / "v", tmp_path / "o", **kw)
    assert second["shards"] == first["shards"] and second["run"]["frames_decoded"] == 0
    _check_complete(tmp_path / "o", second, 4)
    with pytest.raises(BuildError, match="other options"):
        build("videofolder", tmp_path / "v", tmp_path / "o", **{**kw, "clip_len": 2})


def test_workers_give_the_same_shards(tmp_path):
    write_clips_folder(tmp_path / "v", [8, 12, 9, 4])
    kw = dict(clip_len=4, size=(16, 16), progress=False)
    one = build("videofolder", tmp_path / "v", tmp_path / "one", fidelity_sample=1.0, **kw)
    two = build("videofolder", tmp_path / "v", tmp_path / "two", workers=2, fidelity_sample=1.0, **kw)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert one["fidelity"] == two["fidelity"] and one["fidelity"]["clips_checked"] == 2 + 3 + 2 + 1
    assert one["totals"] == two["totals"] and one["totals"]["clips"] == 2 + 3 + 2 + 1


# ------------------------------------------------------------------------------ real footage

@pytest.mark.slow
def test_real_clips_shard_and_decode_with_dali(tmp_path, real_clips):
    manifest = build("videofolder", real_clips, tmp_path / "o", size=(64, 64), workers=2, progress=False)
    # tree_window.avi holds 68 frames (SOURCES.md) but its AVI header declares 444: a training set
    # lists such a cut-short file as truncated and leaves it out (a training set skips bad videos)
    assert manifest["totals"]["skipped"] == 1 and manifest["totals"]["videos"] == 8
    assert manifest["skipped"][0]["input"].endswith("tree_window.avi")
    assert manifest["skipped"][0]["reason"].startswith("truncated: the file ends 376 frames before")
    # frames each other file decodes to (SOURCES.md), 16-frame clips, remainder dropped; clean
    # windows leave repeated frames out and start a clip after each cut (shards.windows)
    frames = dict(zip(("carphone", "kinetics_like_arm_wrestling", "kinetics_like_pool",
                       "rawvideo_part0", "ntu_like_S001C001P001R001A001", "street_pedestrians_vtest",
                       "street_bikes", "ucf101_like_eye_makeup"), (120, 280, 300, 32, 103, 795, 250, 164)))
    expected = 0
    for video in list_videos("videofolder", real_clips, "train"):
        if video.video_id in frames:
            stored = windows.stored_frames(video, (64, 64))
            assert len(stored) == frames[video.video_id]
            segments = np.cumsum([new for _, _, new in windows.clean_frames(stored, lambda f: f)])
            expected += sum(np.bincount(segments)[1:] // 16)
    assert manifest["totals"]["clips"] == expected < sum(n // 16 for n in frames.values())
    decoded = dali_decode_manifest(tmp_path / "o", manifest)
    assert len(decoded) == manifest["totals"]["clips"]
    assert all(frames.shape == (16, 64, 64, 3) for frames, _ in decoded)
    assert {m.video_id for _, m in decoded} == {p.stem for p in real_clips.iterdir()
                                                 if p.suffix != ".md" and p.stem != "tree_window"}
    ntu = next(m for _, m in decoded if m.video_id.startswith("ntu_like"))
    assert ntu.orig_size == [1080, 1920] and ntu.fps == pytest.approx(30, rel=0.01)
    assert all(frames.std() > 1 for frames, _ in decoded)  # real pictures, not blank frames


@pytest.mark.slow
def test_ray_tasks_give_the_same_shards(tmp_path):
    ray = pytest.importorskip("ray")
    write_clips_folder(tmp_path / "v", [8, 12, 9])
    kw = dict(clip_len=4, size=(16, 16), progress=False)
    local = build("videofolder", tmp_path / "v", tmp_path / "local", **kw)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        fanned = build("videofolder", tmp_path / "v", tmp_path / "ray", use_ray=True, **kw)
    finally:
        ray.shutdown()
    assert [s["sha256"] for s in fanned["shards"]] == [s["sha256"] for s in local["shards"]]
    assert fanned["totals"]["clips"] == 2 + 3 + 2
