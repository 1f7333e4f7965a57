"""UCSD Ped2's 12 test videos (ped2-dev) as `make demo` shards them: labels, frames and the
trivial predictors' AUC under the three protocols of zxvad.scoring. Skipped where Ped2 is absent."""

import json
import subprocess
import sys

import numpy as np
import pytest

from shards.build import build
from shards.readers import list_videos

SIDE = 64
T = 4


@pytest.fixture(scope="module")
def ped2_shards(ped2_dev, tmp_path_factory):
    out = tmp_path_factory.mktemp("ped2") / "shards"
    manifest = build("ped2", ped2_dev, out, split="test", size=(SIDE, SIDE), workers=2, progress=False)
    return out, manifest


def test_all_12_test_videos_with_their_labels(ped2_dev, ped2_shards):
    videos = list_videos("ped2", ped2_dev, "test")
    assert [v.video_id for v in videos] == [f"testing/{i:02d}" for i in range(1, 13)]
    labels = np.concatenate([v.labels for v in videos])
    assert len(labels) == 2010 and labels.sum() == 1648  # ped2-dev's SOURCES.md
    scored = np.concatenate([v.labels[T:] for v in videos])
    assert len(scored) == 1962 and (scored == 0).sum() == 342
    assert [v.video_id for v in videos if v.labels.all()] == [f"testing/{i:02d}" for i in (8, 9, 10, 11)]
    _, manifest = ped2_shards
    assert manifest["totals"]["videos"] == 12 and manifest["options"]["clean_windows"] is None


def test_baselines_on_the_stored_frames_under_every_protocol(ped2_shards):
    out, _ = ped2_shards
    proc = subprocess.run([sys.executable, "-m", "zxvad.bench", "baselines", "--target", f"ped2={out}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    auc = json.loads(proc.stdout.strip().splitlines()[-1])["ped2"]["auc"]
    # the lossless 64x64 shards' figures (ped2-dev's SOURCES.md; docs/ped2-and-clean-windows.md)
    assert 100 * auc["copy_last"]["micro_minmax"] == pytest.approx(87.53, abs=0.01)
    assert 100 * auc["mean_T"]["micro_minmax"] == pytest.approx(85.13, abs=0.01)
    assert 100 * auc["linear"]["micro_minmax"] == pytest.approx(84.95, abs=0.01)
    for predictor in auc.values():  # real anomalies: every protocol is well above chance
        assert all(0.6 < v < 1 for v in predictor.values()), predictor
    assert "| copy_last | 87.53 |" in proc.stdout


def test_bench_baselines_scores_a_made_up_target_with_every_protocol(tmp_path):
    """Runs without Ped2: a square that jumps 3 px a frame on the labelled frames, 1 px elsewhere,
    so copy_last's error ranks every abnormal frame above every normal one."""
    from PIL import Image

    root = tmp_path / "target"
    for v in range(2):
        x, labels = 4 + v, np.zeros(30, np.uint8)
        labels[15:20] = 1
        (root / f"v{v}").mkdir(parents=True)
        for t in range(30):
            x += 3 if labels[t] else 1
            image = np.full((SIDE, SIDE, 3), 60, np.uint8)
            image[20:28, x:x + 8] = 240
            Image.fromarray(image).save(root / f"v{v}" / f"{t:03d}.png")
        np.save(root / f"v{v}.npy", labels)
    build("videofolder", root, tmp_path / "shards", split="test", clip_len=8, size=(SIDE, SIDE), progress=False)
    proc = subprocess.run([sys.executable, "-m", "zxvad.bench", "baselines", "--target",
                           f"jump={tmp_path / 'shards'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    auc = json.loads(proc.stdout.strip().splitlines()[-1])["jump"]["auc"]
    assert set(auc) == {"copy_last", "mean_T", "linear"}
    assert auc["copy_last"] == {"micro_minmax": 1.0, "micro_raw": 1.0, "macro": 1.0}
    assert "| predictor | micro_minmax | micro_raw | macro |" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "zxvad.bench", "baselines", "--target", "nothing"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --target 'nothing': expected NAME=SHARDS"
