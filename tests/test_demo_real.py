"""shards.demo's target-real: real frames left untouched, labels on exactly the injected frames,
deterministic by seed, and no frame of the real clip in the demo's training or donor shards."""

import hashlib
import io
import json
import subprocess
import sys

import av
import numpy as np
import pytest

from shards.demo import REAL_DONOR, REAL_SOURCE, real_frames, write_demo_domains
from shards.readers import list_videos, read_frames

SIZE = 64
SMALL = dict(source_videos=4, source_frames=12, test_videos=3, test_frames=40, train_videos=1,
             train_frames=12)


@pytest.fixture(scope="module")
def demo_real(tmp_path_factory, real_clips):
    root = tmp_path_factory.mktemp("demo") / "raw"
    domains = write_demo_domains(root, seed=0, size=SIZE, real_source=real_clips / REAL_SOURCE, **SMALL)
    return root, domains, real_frames(real_clips / REAL_SOURCE, SIZE)


def _nearest(frame: np.ndarray, real: np.ndarray) -> tuple[int, float]:
    """Index of the real frame closest to ``frame`` and their mean squared difference."""
    mse = ((real.astype(np.float32) - frame.astype(np.float32)) ** 2).mean(axis=(1, 2, 3))
    return int(mse.argmin()), float(mse.min())


def test_labels_mark_exactly_the_injected_frames(demo_real):
    root, domains, real = demo_real
    assert domains["target-real"] == ("ped2", root / "target-real")
    videos = list_videos("ped2", root / "target-real", "test")
    assert [v.video_id for v in videos] == ["testing/01", "testing/02", "testing/03"]
    kinds = set()
    for video in videos:
        frames = np.stack(list(read_frames(video)))
        assert len(frames) == len(video.labels) == 40
        # where each frame came from, found by content alone (not from real.json)
        match = [_nearest(f, real) for f in frames]
        previous = None
        for t, ((src, mse), label) in enumerate(zip(match, video.labels)):
            pasted = mse > 0  # not bit-equal to any real frame: something was drawn on it
            skipped = previous is not None and src - previous != 1
            assert bool(label) == (pasted or skipped), (video.video_id, t, src, previous, mse)
            kinds |= {"object"} if pasted else {"speed-up"} if skipped else set()
            previous = src
        assert not video.labels[:8].any() and 0 < video.labels.mean() <= 1 / 3 + 1e-9, video.video_id
    assert kinds == {"object", "speed-up"}
    meta = json.loads((root / "target-real" / "real.json").read_text())
    assert meta["source"] == REAL_SOURCE and meta["donor"] == REAL_DONOR
    first = list_videos("ped2", root / "target-real", "test")[0]
    assert [_nearest(f, real)[0] for f in read_frames(first)][:8] == meta["videos"][0]["source_frames"][:8]


def test_same_seed_same_bytes_other_seed_differs(demo_real, real_clips, tmp_path):
    root, _, _ = demo_real

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    again = write_demo_domains(tmp_path / "a", seed=0, size=SIZE, real_source=real_clips / REAL_SOURCE, **SMALL)
    assert digest(again["target-real"][1]) == digest(root / "target-real")
    other = write_demo_domains(tmp_path / "b", seed=1, size=SIZE, real_source=real_clips / REAL_SOURCE, **SMALL)
    assert (other["target-real"][1] / "ped2" / "ped2.mat").read_bytes() != \
        (root / "target-real" / "ped2" / "ped2.mat").read_bytes()


def _signature(frame: np.ndarray) -> str:
    """A content hash that survives lossy coding: 4x4 block means of the grey image, 8 levels."""
    grey = frame.astype(np.float32).mean(axis=2)
    h, w = grey.shape
    blocks = grey.reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3))
    return hashlib.sha1((blocks // 32).astype(np.uint8).tobytes()).hexdigest()


def _shard_signatures(out) -> list[str]:
    """Signatures of every frame stored in a shard set, decoded with PyAV."""
    import webdataset as wds

    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    found = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        with av.open(io.BytesIO(sample["mkv"])) as container:
            found += [_signature(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return found


def test_no_frame_of_the_real_clip_in_training_or_donor_shards(demo_real, tmp_path):
    from shards.build import build
    from zxvad import config

    root, domains, real = demo_real
    clip = {_signature(f) for f in real}
    # as `make demo` builds them: G's clips and O's donors both come from the source domain only
    demo = config.load("demo")
    assert demo.data.train_shards == demo.data.donor_shards == "demo-out/shards/source"
    build("videofolder", root / "source", tmp_path / "source", split="train", clip_len=8,
          size=(SIZE, SIZE), progress=False)
    training = _shard_signatures(tmp_path / "source")
    assert len(training) >= 4 * 8 and not set(training) & clip
    # the check can fail: shards cut from target-real's own frames are caught by the same hash
    build("ped2", root / "target-real", tmp_path / "leak", split="test", size=(SIZE, SIZE), progress=False)
    leaked = _shard_signatures(tmp_path / "leak")
    # (about 94% of its frames after VP9; the others carry a pasted object)
    assert sum(s in clip for s in leaked) > 0.75 * len(leaked)


def test_cli_notes_a_missing_clip_in_one_line_and_goes_on(tmp_path):
    missing = tmp_path / "nothing"
    proc = subprocess.run([sys.executable, "-m", "shards.demo", "--out", str(tmp_path / "o"),
                           "--source-videos", "4", "--test-videos", "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "ZXVAD_REAL_CLIPS": str(missing)})
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "real footage" in line]
    assert notes == [f"note: real footage {missing / REAL_SOURCE} not found (set ZXVAD_REAL_CLIPS "
                     "or --real-source): the demo runs without target-real"]
    assert not (tmp_path / "o" / "target-real").exists()
    bad = subprocess.run([sys.executable, "-m", "shards.demo", "--out", str(tmp_path / "p"),
                          "--real-source", str(missing / "x.avi")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: real footage {missing / 'x.avi'}: no such file"
