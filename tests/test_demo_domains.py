"""shards.demo: the synthetic domains are deterministic, read back through the real readers,
carry labelled anomalies where they occur, and look different from one another."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards.demo import SOURCE_CLASSES, write_demo_domains
from shards.readers import list_videos, probe, read_frames

SMALL = dict(source_videos=4, source_frames=12, test_videos=2, test_frames=40, train_videos=1, train_frames=12)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "domains"
    return root, write_demo_domains(root, seed=0)


def _stack(video) -> np.ndarray:
    return np.stack(list(read_frames(video))).astype(np.float32)


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_domains_in_real_layouts(demo):
    root, domains = demo
    assert domains == {"source": ("videofolder", root / "source"),
                       "target-street": ("ped2", root / "target-street"),
                       "target-plaza": ("avenue", root / "target-plaza")}
    source = list_videos("videofolder", root / "source")
    assert len(source) == 24
    assert {v.label_class for v in source} == set(SOURCE_CLASSES)
    assert {v.source.suffix for v in source} == {".avi", ".mkv"}
    for v in source[:2] + source[-2:]:
        assert probe(v) == (40, 25.0, 64, 64, 0)  # whole files: nothing missing
        assert sum(1 for _ in read_frames(v)) == 40
    assert (root / "target-street" / "ped2" / "testing" / "frames" / "01" / "000.jpg").is_file()
    assert (root / "target-plaza" / "avenue" / "testing" / "frames" / "01" / "0000.jpg").is_file()
    for name, (dataset, path) in list(domains.items())[1:]:
        train, test = list_videos(dataset, path, "train"), list_videos(dataset, path, "test")
        assert [v.video_id for v in train] == ["training/01", "training/02", "training/03"]
        assert [v.video_id for v in test] == [f"testing/{k:02d}" for k in range(1, 7)]
        assert all(probe(v).num_frames == 60 for v in train) and all(v.labels is None for v in train)
        labels = np.concatenate([v.labels for v in test])
        assert len(labels) == 6 * 72
        assert 0.2 <= labels.mean() <= 0.4, name  # about 30% anomalous frames
        for v in test:
            assert v.labels.any() and not v.labels[:8].any(), v.video_id  # never in the unscored start


def test_demo_dataset_name_reads_domains(demo):
    root, _ = demo
    train = list_videos("demo", root, "train")
    assert len(train) == 24 and all(v.video_id.startswith("source/") for v in train)
    test = list_videos("demo", root, "test")
    assert [v.label_class for v in test] == ["target-street"] * 6 + ["target-plaza"] * 6
    assert test[0].video_id == "target-street/testing/01"
    plaza = list_videos("demo", root / "target-plaza", "test")  # a single domain folder
    np.testing.assert_array_equal(plaza[0].labels, test[6].labels)


def test_anomalies_are_labelled_where_they_occur(demo):
    root, domains = demo
    for name in ("target-street", "target-plaza"):
        dataset, path = domains[name]
        areas, motions = {0: [], 1: []}, {0: [], 1: []}
        for v in list_videos(dataset, path, "test"):
            frames = _stack(v)
            still = np.median(frames, axis=0)  # walkers move, so the median is the empty scene
            area = (np.abs(frames - still).sum(-1) > 60).mean((1, 2))
            motion = np.r_[0, (np.abs(np.diff(frames, axis=0)).sum(-1) > 60).mean((1, 2))]
            y = v.labels.astype(bool)
            assert motion[y].mean() > motion[~y].mean(), (name, v.video_id)  # fast things in labelled frames
            for k in (0, 1):
                areas[k] += list(area[y == k])
                motions[k] += list(motion[y == k])
        assert np.mean(areas[1]) > 1.4 * np.mean(areas[0]), name
        assert np.mean(motions[1]) > 1.6 * np.mean(motions[0]), name


def test_scenes_differ(demo):
    root, domains = demo
    colour, texture = {}, {}
    for name, (dataset, path) in domains.items():
        still = np.median(_stack(list_videos(dataset, path, "train")[0]), axis=0)
        colour[name] = still.mean((0, 1))
        texture[name] = np.abs(np.diff(still, axis=1)).mean()
    names = list(domains)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(colour[a] - colour[b]) > 30, (a, b)
            assert max(texture[a], texture[b]) > 1.4 * min(texture[a], texture[b]), (a, b)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_demo_domains(tmp_path / "a", seed=3, **SMALL)
    write_demo_domains(tmp_path / "b", seed=3, **SMALL)
    write_demo_domains(tmp_path / "c", seed=4, **SMALL)
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert len(a) > 20 and a == b
    assert a.keys() == c.keys() and sum(a[k] != c[k] for k in a) > len(a) // 2
    first = list_videos("ped2", tmp_path / "a" / "target-street", "test")[0]
    again = list_videos("ped2", tmp_path / "b" / "target-street", "test")[0]
    np.testing.assert_array_equal(_stack(first), _stack(again))
    np.testing.assert_array_equal(first.labels, again.labels)


def test_refuses_non_empty_output_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        write_demo_domains(out, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "mine"
    domains = write_demo_domains(out, overwrite=True, **SMALL)
    assert not (out / "keep.txt").exists() and domains["target-plaza"][1].is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_cli(tmp_path):
    run = [sys.executable, "-m", "shards.demo"]
    shown = subprocess.run(run + ["--help"], capture_output=True, text=True, check=True)
    assert "--out" in shown.stdout and "--seed" in shown.stdout
    bad = subprocess.run(run + ["--out", str(tmp_path / "x"), "--size", "33"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: size 33: expected an even number of pixels >= 32"
    assert not (tmp_path / "x").exists()
    ok = subprocess.run(run + ["--out", str(tmp_path / "d"), "--seed", "1", "--source-videos", "4",
                               "--test-videos", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "target-street  ped2" in ok.stdout
    assert len(list_videos("videofolder", tmp_path / "d" / "source")) == 4
    again = subprocess.run(run + ["--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists and is not empty" in again.stderr
