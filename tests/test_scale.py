"""The scale path: a Jester-layout corpus, compact frame lists, the resume journal, and cost linear in N."""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from shards import readers
from shards.jester_like import write_jester_like
from shards.writer import BuildState
from zxvad.bench import scale

ROOT = Path(__file__).resolve().parents[1]


def test_jester_like_is_deterministic_and_read_by_the_jester_reader(tmp_path):
    a = write_jester_like(tmp_path / "a", 24, size=16, frames=(3, 6), progress=False)
    write_jester_like(tmp_path / "b", 24, size=16, frames=(3, 6), progress=False)
    assert a["train"] + a["validation"] == 24 and a["validation"] == 3  # ids 8, 16, 24
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    train = readers.list_videos("jester", tmp_path / "a", "train")
    test = readers.list_videos("jester", tmp_path / "a", "test")
    assert [v.video_id for v in test] == ["8", "16", "24"] and len(train) == 21
    assert sum(len(v.source) for v in train + test) == a["frames"]
    first = train[0]
    assert first.source[0].name == "00001.jpg" and 3 <= len(first.source) <= 6
    assert readers.probe(first) == (len(first.source), 12.0, 16, 16, 0)
    assert len(list(readers.read_frames(first))) == len(first.source)


def test_frame_files_are_small_and_survive_pickling(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    for name in ("00010.jpg", "00002.jpg", "00001.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    frames = readers._image_names(folder)
    assert [p.name for p in frames] == ["00001.jpg", "00002.jpg", "00010.jpg"]
    assert frames[-1] == folder / "00010.jpg" and frames[:2] == [folder / "00001.jpg", folder / "00002.jpg"]
    assert pickle.loads(pickle.dumps(frames)) == frames and len(pickle.loads(pickle.dumps(frames))) == 3
    assert not readers._image_names(tmp_path / "missing")
    many = readers.FrameFiles(folder, [f"{i:05d}.jpg" for i in range(1, 37)])
    assert 2 * len(pickle.dumps(many)) < len(pickle.dumps(list(many)))  # what the build ships per task


def test_resume_journal_appends_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "state.json"
    state = BuildState(path, {"a": 1})
    state.add_shard({"name": "s-000000.tar", "bytes": 1}, 0, ["k0", "k1"])
    state.add_shard({"name": "s-000001.tar", "bytes": 1}, 0, ["k2"])
    state.finish_bucket(0, 3, [], None)
    size = path.stat().st_size
    state.add_shard({"name": "s-000002.tar", "bytes": 1}, 1, ["k3"])
    assert path.stat().st_size == size  # the options are written once; shards are appended
    with open(path.with_suffix(".jsonl"), "a") as f:
        f.write('{"shard": {"name": "s-0000')  # a write cut by kill -9
    again = BuildState(path, {"a": 1})
    assert [s["name"] for s in again.shards] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert again.done_keys(0) == {"k0", "k1", "k2"} and again.bucket_done(0) and not again.bucket_done(1)
    assert path.with_suffix(".jsonl").read_text().endswith("}\n")  # the torn line is cut off
    again.finish_bucket(1, 1, [], None)
    assert BuildState(path, {"a": 1}).bucket_done(1)


def test_demo_command_dispatches_jester_like(tmp_path):
    run = subprocess.run([sys.executable, "-m", "shards.demo", "jester-like", "--videos", "0", "--out",
                          str(tmp_path / "j")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == "error: --videos 0: expected at least 1"


@pytest.mark.slow
def test_build_cost_and_driver_memory_grow_linearly(tmp_path):
    """400 and 2,000 videos of 4-8 frames at 16x16: CPU per video and the driver's peak RSS stay flat."""
    args = argparse.Namespace(frame_size=16, clip_len=4, workers=2)
    corpus = scale.ensure_corpus(tmp_path, 2000, 16, "4-8")
    rows = []
    for n in (400, 2000):
        root = scale.subset_root(tmp_path, corpus, n)
        row = {"videos": n, "mode": "pool", **scale.measure_listing(root),
               **scale.measure_build(root, tmp_path / f"out-{n}", args, None)}
        manifest = json.loads((tmp_path / f"out-{n}" / "manifest.json").read_text())
        assert manifest["totals"]["videos"] == row["listed"] == round(n * 7 / 8)  # one in 8 is validation
        rows.append(row)
    lin = scale.linearity(rows)["pool"]
    # loose bounds for a shared 2-core machine: a quadratic step would give 5x from 400 to 2,000
    assert lin["cpu_ratio"] < 1.6, rows
    assert lin["driver_rss_ratio"] < 1.15, rows  # the listing is on disk: flat, not ~1 KB a video
    assert rows[1]["listing_s"] / 2000 < 3 * max(rows[0]["listing_s"] / 400, 1e-4), rows


def test_summary_lists_the_first_skipped_inputs_and_counts_the_rest():
    from shards.build import SKIPPED_SHOWN, summary

    skipped = [{"input": f"v{i}", "reason": "12 frames, fewer than the 16 a clip needs"} for i in range(50)]
    manifest = {"totals": {"shards": 1, "videos": 1, "clips": 1, "frames": 16, "bytes": 10, "skipped": 50},
                "options": {"codec": "vp9", "quality": "lossless"}, "skipped": skipped, "run": {}}
    lines = summary(manifest).splitlines()
    assert sum(line.startswith("skipped v") for line in lines) == SKIPPED_SHOWN
    assert lines[-1] == f"... and {50 - SKIPPED_SHOWN} more skipped (see manifest.json)"
