"""zxvad.detect: real clips of every codec, a pasted anomaly, flat memory, one-line errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from zxvad import detect

from helpers import tiny_config, tiny_generator, write_checkpoint

T = 4
SIZE = 32
ROOT = Path(__file__).resolve().parents[1]
CLIP_CAP = 48


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny models run fastest on one thread (the fixture lives in conftest.py)."""


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = detect.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def decoded_frames(path: Path, cap: int | None = None) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in islice(container.decode(video=0), cap))


def scene(n: int, anomaly: tuple[int, int] | None = None, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: smooth colour waves drifting slowly; during ``anomaly``
    (first, last) an 8x8 white block jumps to a random place every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        drift = 0.02 * i
        img = np.stack([0.5 + 0.25 * np.sin(2 * np.pi * (xx + drift)),
                        0.5 + 0.25 * np.cos(2 * np.pi * (yy + drift / 2)),
                        0.35 + 0.1 * np.sin(2 * np.pi * (xx + yy - drift))], axis=-1)
        if anomaly and anomaly[0] <= i <= anomaly[1]:
            y, x = rng.integers(0, size - 8, 2)
            img[y:y + 8, x:x + 8] = 1.0
        frames[i] = np.round(img * 255)
    return frames


def write_folder(frames: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i}.png")  # natural order: img_2 < img_10
    return folder


def write_video(frames: np.ndarray, path: Path, fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuvj420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- helpers ---------------------------------------------------------------------------------

def test_format_time_and_segments():
    assert detect.format_time(1.2) == "00:01.20"
    assert detect.format_time(83.456) == "01:23.46"
    assert detect.format_time(3723) == "1:02:03.00"
    tracker = detect.SegmentTracker(frame_duration=0.1)
    flags = [0, 1, 1, 0, 0, 1, 1, 1]
    closed = [tracker.push(i, i / 10, bool(f)) for i, f in enumerate(flags)]
    assert [str(c) for c in closed if c] == ["00:00.10-00:00.30"]
    last = tracker.close()
    assert (last.first, last.last, str(last)) == (5, 7, "00:00.50-00:00.80")
    assert [(s.first, s.last) for s in tracker.segments] == [(1, 2), (5, 7)]


def test_sliding_normaliser_matches_min_max_over_the_window():
    values = [20.0, 22.0, 21.0, 25.0, 25.0, 19.0]
    norm = detect.SlidingNormaliser(window=3)
    scores = [norm.push(v) for v in values]
    assert scores[0] == 0.0  # a single value: no span
    assert scores[1] == pytest.approx(0.0)  # the highest PSNR of [20, 22]
    assert scores[2] == pytest.approx(0.5)  # 21 in [20, 22]
    assert scores[3] == pytest.approx(0.0)  # 25 in [22, 21, 25]
    assert scores[5] == pytest.approx(1.0)  # 19 in [25, 25, 19]


# --- real clips ------------------------------------------------------------------------------

def test_every_real_clip_gets_one_score_per_scorable_frame(real_clips, tiny_checkpoint, tmp_path, capsys):
    clips = sorted(p for p in real_clips.iterdir() if p.suffix in (".mp4", ".avi"))
    codecs = set()
    for clip in clips:
        with av.open(str(clip)) as c:
            codecs.add(c.streams.video[0].codec_context.name)
    assert {"h264", "mpeg4", "cinepak"} <= codecs and any(c.startswith("msmpeg4") for c in codecs)
    rc, out, err = run(capsys, *clips, "--checkpoint", tiny_checkpoint, "--out", tmp_path,
                       "--max-frames", CLIP_CAP, "--no-progress")
    assert rc == 0, err
    for clip in clips:
        name = clip.stem
        expected = decoded_frames(clip, CLIP_CAP) - T
        rows = read_csv(tmp_path / f"{name}.csv")
        assert len(rows) == expected, name
        assert [int(r["frame"]) for r in rows] == list(range(T, T + expected))
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["decoded_frames"] == expected + T
        assert report["frames"]["index"] == list(range(T, T + expected))
        psnr, score = np.array(report["frames"]["psnr"]), np.array(report["frames"]["score"])
        assert np.all(np.isfinite(psnr)) and np.all((psnr > 0) & (psnr < 100)), name
        assert score.min() == pytest.approx(0.0) and score.max() == pytest.approx(1.0), name
        assert np.all(np.diff(report["frames"]["time_s"]) > 0), name
        assert np.allclose([float(r["psnr"]) for r in rows], psnr, atol=1e-4)
        png = tmp_path / f"{name}-curve.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"{name}: {expected + T} frames ({expected} scored)" in out
    assert not list(tmp_path.glob(".*")), "partial files left behind"


def test_whole_clip_with_overlay_threshold_and_progress(real_clips, tiny_checkpoint, tmp_path, capsys):
    clip = real_clips / "carphone.mp4"
    total = decoded_frames(clip)
    rc, out, err = run(capsys, clip, "--checkpoint", tiny_checkpoint, "--out", tmp_path,
                       "--overlay", "--threshold", "0.7", "--batch-size", "7")
    assert rc == 0, err
    assert "frame/s" in err  # tqdm's rate
    report = json.loads((tmp_path / "carphone.json").read_text())
    flags = np.array(report["frames"]["anomalous"])
    assert len(flags) == total - T
    assert np.array_equal(flags, np.array(report["frames"]["score"]) >= 0.7)
    segments = report["segments"]
    assert sum(s["last_frame"] - s["first_frame"] + 1 for s in segments) == flags.sum() > 0
    ranges = re.search(r"anomalous segments \(score >= 0.7\): (.*)", out).group(1).split(", ")
    assert ranges == [s["range"] for s in segments]
    assert all(re.fullmatch(r"\d\d:\d\d\.\d\d-\d\d:\d\d\.\d\d", r) for r in ranges)
    with av.open(str(tmp_path / "carphone-overlay.mp4")) as video:
        stream = video.streams.video[0]
        assert (stream.width, stream.height) == (176, 144)
        shown = [f.to_ndarray(format="rgb24") for f in video.decode(stream)]
    assert len(shown) == total
    with av.open(str(clip)) as original:  # the first T frames are shown without heat
        first = next(original.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(shown[0].astype(int) - first).mean() < 8
    assert np.abs(shown[T + 10].astype(int) - first).mean() > np.abs(shown[0].astype(int) - first).mean()


def test_http_url_is_streamed(real_clips, tiny_checkpoint, tmp_path, capsys):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(real_clips)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ucf101_like_eye_makeup.avi"
        rc, out, err = run(capsys, url, "--checkpoint", tiny_checkpoint, "--out", tmp_path,
                           "--max-frames", 20, "--no-progress")
    finally:
        server.shutdown()
    assert rc == 0, err
    report = json.loads((tmp_path / "ucf101_like_eye_makeup.json").read_text())
    assert report["source"] == url and report["normalisation"] == "video"
    assert len(report["frames"]["psnr"]) == 20 - T


# --- a pasted anomaly ------------------------------------------------------------------------

def fit_generator(frames: np.ndarray, normal: list[int], steps: int = 150) -> torch.nn.Module:
    """A tiny G fitted briefly (MSE) to predict the normal frames of ``frames``."""
    G = tiny_generator()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    starts = [s for s in range(len(frames) - T) if all(i in normal for i in range(s, s + T + 1))]
    windows = torch.stack([video[s:s + T + 1] for s in starts])
    opt = torch.optim.Adam(G.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (16,), generator=gen)]
        loss = torch.nn.functional.mse_loss(G(batch[:, :T]).prediction, batch[:, T])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return G.eval()


def test_pasted_anomaly_scores_higher(tmp_path, capsys):
    first, last = 40, 60
    frames = scene(100, anomaly=(first, last))
    normal = [i for i in range(100) if not first <= i <= last]
    ckpt = write_checkpoint(tmp_path / "fitted", fit_generator(frames, normal))
    folder = write_folder(frames, tmp_path / "street-cam")
    rc, out, err = run(capsys, folder, "--checkpoint", ckpt, "--out", tmp_path / "out",
                       "--threshold", "0.5", "--fps", "10", "--no-progress")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "street-cam.json").read_text())
    index, score = np.array(report["frames"]["index"]), np.array(report["frames"]["score"])
    inside = (index >= first) & (index <= last)
    # every predicted frame in the span sees the block in its target; the first clean frames
    # after it still see it in their inputs, so compare with the frames away from the span
    away = (index < first) | (index > last + T)
    assert score[inside].mean() > score[away].mean() + 0.4
    assert np.median(score[inside]) > np.percentile(score[away], 95)
    segments = report["segments"]
    assert segments and all(first <= s["first_frame"] and s["last_frame"] <= last + T for s in segments)
    covered = sum(s["last_frame"] - s["first_frame"] + 1 for s in segments if s["first_frame"] <= last)
    assert covered >= 0.8 * (last - first + 1)
    assert "anomalous segments (score >= 0.5): 00:04.00-" in out  # frame 40 at 10 fps


def test_sliding_window_normalisation(tmp_path, tiny_checkpoint, capsys):
    folder = write_folder(scene(30, anomaly=(12, 15)), tmp_path / "cam")
    rc, out, err = run(capsys, folder, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out",
                       "--window", "8", "--threshold", "0.9", "--no-progress")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "cam.json").read_text())
    assert report["normalisation"] == "window:8"
    psnr, score = np.array(report["frames"]["psnr"]), np.array(report["frames"]["score"])
    for i in range(len(psnr)):
        recent = psnr[max(0, i - 7):i + 1]
        span = recent.max() - recent.min()
        want = 0.0 if span == 0 else 1 - (psnr[i] - recent.min()) / span
        assert score[i] == pytest.approx(want, abs=1e-9)


# --- flat memory -----------------------------------------------------------------------------

@pytest.mark.slow
def test_memory_stays_flat_over_a_long_stream(tmp_path, tiny_checkpoint):
    video = write_video(scene(3000, size=64), tmp_path / "long.avi")
    peaks = {}
    for frames in (300, 3000):
        proc = subprocess.run(
            [sys.executable, "-m", "zxvad.detect", str(video), "--checkpoint", str(tiny_checkpoint),
             "--out", str(tmp_path / f"out{frames}"), "--max-frames", str(frames), "--overlay",
             "--threads", "1", "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert f"long: {frames} frames ({frames - T} scored)" in proc.stdout
        peaks[frames] = float(re.search(r"peak RSS (\d+) MB", proc.stdout).group(1))
    assert peaks[3000] - peaks[300] < 30, peaks


# --- errors ----------------------------------------------------------------------------------

def one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unreadable_short_and_missing_inputs(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    one_line_error(*run(capsys, broken, "--checkpoint", tiny_checkpoint, "--out", out)[::2],
                   "broken.mp4", "cannot be read as video")
    short = write_folder(scene(T), tmp_path / "short")
    one_line_error(*run(capsys, short, "--checkpoint", tiny_checkpoint, "--out", out, "--no-progress")[::2],
                   "short", "4 frame(s), needs at least T+1 = 5")
    one_line_error(*run(capsys, tmp_path / "nope.avi", "--checkpoint", tiny_checkpoint, "--out", out)[::2],
                   "nope.avi", "no such file")
    (tmp_path / "empty").mkdir()
    one_line_error(*run(capsys, tmp_path / "empty", "--checkpoint", tiny_checkpoint, "--out", out)[::2],
                   "no images")
    assert not out.exists() or not any(out.iterdir()), "failed inputs left files behind"


def test_good_inputs_still_scored_when_another_fails(tmp_path, tiny_checkpoint, capsys):
    good = write_folder(scene(8), tmp_path / "good")
    rc, out, err = run(capsys, tmp_path / "missing.mp4", good, "--checkpoint", tiny_checkpoint,
                       "--out", tmp_path / "out", "--no-progress")
    one_line_error(rc, err, "missing.mp4")
    assert len(read_csv(tmp_path / "out" / "good.csv")) == 8 - T


def test_checkpoint_errors(tmp_path, tiny_checkpoint, capsys):
    clip = write_folder(scene(8), tmp_path / "cam")
    one_line_error(*run(capsys, clip, "--checkpoint", tmp_path / "missing")[::2], "not found")
    one_line_error(*run(capsys, clip, "--checkpoint", tiny_checkpoint, "--size", "64")[::2],
                   "trained on 32x32 frames, not the requested --size 64")
    wide = tiny_config("model.width=8", "model.memory_dim=64")
    wrong = write_checkpoint(tmp_path / "wrong", tiny_generator(), wide)  # width-4 weights, width-8 config
    one_line_error(*run(capsys, clip, "--checkpoint", wrong)[::2], "weights do not match its config.yaml")


def test_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        detect.main(["--help"])
    assert exit_.value.code == 0
    assert "--threshold" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        detect.main(["x.mp4", "--checkpoint", "c", "--window", "1"])
    assert exit_.value.code == 2
    assert "--window 1: must be at least 2" in capsys.readouterr().err


# --- labels: AUC beside the trivial baselines -------------------------------------------------

def test_labels_print_auc_beside_baselines(tmp_path, tiny_checkpoint, capsys):
    from zxvad.scoring import VideoResult, baseline_predictions, frame_auc, psnr

    frames = scene(30, anomaly=(14, 18))
    folder = write_folder(frames, tmp_path / "cam")
    labels = np.zeros(30, dtype=np.uint8)
    labels[14:19] = 1
    np.save(tmp_path / "cam.npy", labels)
    (tmp_path / "other.txt").write_text(",".join(map(str, labels)))
    other = write_folder(frames, tmp_path / "other")
    rc, out, err = run(capsys, folder, other, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out",
                       "--labels", tmp_path / "cam.npy", "--labels", tmp_path / "other.txt", "--no-progress")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "cam.json").read_text())
    # copy_last recomputed from the frames themselves: PSNR of frame t-1 against frame t
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    windows = x.unfold(0, T + 1, 1).permute(0, 4, 1, 2, 3)
    expected = psnr(baseline_predictions(windows[:, :T])["copy_last"], windows[:, T]).numpy()
    assert report["frames"]["baseline_psnr"]["copy_last"] == pytest.approx(expected.tolist(), abs=1e-3)
    want = {p: frame_auc([VideoResult("cam", np.array(v), labels)], T)
            for p, v in {"G": report["frames"]["psnr"], **report["frames"]["baseline_psnr"]}.items()}
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if line.split() and line.split()[0] in ("target", "cam", "other", "pooled")}
    assert table["target"] == ["G", "%", "copy_last", "mean_T", "linear", "gain"]
    assert float(table["cam"][0]) == pytest.approx(100 * want["G"], abs=0.005)
    assert float(table["cam"][1]) == pytest.approx(100 * want["copy_last"], abs=0.005)
    best = max(want["copy_last"], want["mean_T"], want["linear"])
    assert float(table["cam"][4]) == pytest.approx(100 * (want["G"] - best), abs=0.005)
    assert table["pooled"] == table["cam"] == table["other"]  # the same frames twice


def test_bad_labels_are_one_line_errors(tmp_path, tiny_checkpoint, capsys):
    folder = write_folder(scene(10), tmp_path / "cam")
    ckpt = ["--checkpoint", tiny_checkpoint, "--out", tmp_path / "out", "--no-progress"]
    one_line_error(*run(capsys, folder, *ckpt, "--labels", tmp_path / "none.npy")[::2],
                   "none.npy", "no such file")
    (tmp_path / "bad.txt").write_text("0 1 2")
    one_line_error(*run(capsys, folder, *ckpt, "--labels", tmp_path / "bad.txt")[::2],
                   "bad.txt", "one 0/1 value per frame")
    (tmp_path / "short.txt").write_text("0 1 0")
    rc, out, err = run(capsys, folder, *ckpt, "--labels", tmp_path / "short.txt")
    one_line_error(rc, err, "short.txt", "3 labels for the 10 decoded frames")
    with pytest.raises(SystemExit) as exit_:
        detect.main([str(folder), str(folder), *map(str, ckpt), "--labels", str(tmp_path / "bad.txt")])
    assert exit_.value.code == 2
    assert "--labels given 1 time(s) for 2 input(s)" in capsys.readouterr().err
