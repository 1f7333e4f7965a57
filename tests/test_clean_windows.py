"""Clean training windows: repeated frames left out and no clip across a scene cut, with the
thresholds of shards.windows checked against the real footage they were measured on."""

import io
import json
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from shards import windows
from shards.build import build
from shards.readers import list_videos

SIDE = 64
FRAMES, REPEAT, CUT = 40, 12, 25  # frame REPEAT repeats frame REPEAT - 1; frame CUT opens a new scene


def scene_frame(index: int) -> np.ndarray:
    """A gray frame: a gradient (reversed after the cut), a square moving 1 px a frame, and the
    frame's index written into the top-left 8x8 block (6 levels a step)."""
    ramp = np.linspace(40, 200, SIDE)
    image = np.tile(ramp[::-1] if index >= CUT else ramp, (SIDE, 1))
    x = 10 + index
    image[30:38, x:x + 8] = 250
    image[:8, :8] = 6 * index
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def write_video(root):
    folder = root / "clips" / "v0"
    folder.mkdir(parents=True)
    for i in range(FRAMES):
        source = REPEAT - 1 if i == REPEAT else i
        Image.fromarray(scene_frame(source)).save(folder / f"{i:03d}.png")
    return root / "clips"


def stored_clips(out) -> list[list[int]]:
    """The source frame index of every stored frame, clip by clip, read back from the shards."""
    import webdataset as wds

    manifest = json.loads((out / "manifest.json").read_text())
    clips = []
    for sample in wds.WebDataset([str(out / s["name"]) for s in manifest["shards"]], shardshuffle=False,
                                 empty_check=False):
        with av.open(io.BytesIO(sample["mkv"])) as container:
            levels = [f.to_ndarray(format="rgb24")[2:6, 2:6, 0].mean() for f in container.decode(video=0)]
        clips.append([int(round(v / 6)) for v in levels])
    return sorted(clips)


def test_the_scene_has_one_repeat_and_one_cut_and_moves_smoothly_elsewhere():
    frames = np.stack([scene_frame(REPEAT - 1 if i == REPEAT else i) for i in range(FRAMES)])
    steps = windows.transition_psnr(frames)
    kinds = [windows.step_kind(steps, j) for j in range(len(steps))]
    assert [j for j, k in enumerate(kinds) if k != windows.OK] == [REPEAT - 1, CUT - 1]
    assert kinds[REPEAT - 1] == windows.DUPLICATE and kinds[CUT - 1] == windows.CUT
    assert 20 < np.delete(steps, [REPEAT - 1, CUT - 1]).min() < np.delete(steps, [REPEAT - 1, CUT - 1]).max() < 40


def test_no_stored_clip_holds_a_repeated_frame_or_spans_a_cut(tmp_path):
    root = write_video(tmp_path)
    manifest = build("videofolder", root, tmp_path / "clean", split="train", clip_len=8,
                     size=(SIDE, SIDE), progress=False)
    clean = stored_clips(tmp_path / "clean")
    assert manifest["options"]["clean_windows"] == {"cut_db": windows.CUT_DB, "spike_db": windows.SPIKE_DB}
    assert manifest["run"]["duplicates"] == 1 and manifest["run"]["cuts"] == 1
    # frames 0..24 without the repeat (24 frames: 3 clips), then 25..32; the rest is too short
    assert clean == [list(range(0, 8)), [8, 9, 10, 11, 13, 14, 15, 16], list(range(17, 25)),
                     list(range(25, 33))]
    for clip in clean:
        assert all(b - a == 1 or (a, b) == (REPEAT - 1, REPEAT + 1) for a, b in zip(clip, clip[1:]))
        assert all(i < CUT for i in clip) or all(i >= CUT for i in clip)
    # the check can fail: without clean windows, clips hold the repeat and span the cut
    raw = build("videofolder", root, tmp_path / "raw", split="train", clip_len=8, size=(SIDE, SIDE),
                progress=False, clean_windows=False)
    assert raw["options"]["clean_windows"] is None
    assert [8, 9, 10, 11, 11, 13, 14, 15] in stored_clips(tmp_path / "raw")
    assert [24, 25, 26, 27, 28, 29, 30, 31] in stored_clips(tmp_path / "raw")


def test_test_sets_keep_every_frame_and_the_cli_switches_it_off(tmp_path):
    root = write_video(tmp_path)
    test = build("videofolder", root, tmp_path / "test", split="test", clip_len=8, size=(SIDE, SIDE),
                 progress=False)
    assert test["options"]["clean_windows"] is None and test["totals"]["frames"] >= FRAMES
    proc = subprocess.run([sys.executable, "-m", "shards.build", "videofolder", "--root", str(root),
                           "--out", str(tmp_path / "cli"), "--clip-len", "8", "--size", f"{SIDE}x{SIDE}",
                           "--no-clean-windows", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["options"]["clean_windows"] is None
    assert "clean windows" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "shards.build", "videofolder", "--root", str(root),
                           "--out", str(tmp_path / "on"), "--clip-len", "8", "--size", f"{SIDE}x{SIDE}",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "clean windows: 1 repeated frames left out, 1 cuts split" in proc.stdout


def test_a_stutter_is_a_repeat_but_slow_motion_and_a_still_shot_are_not():
    # frame doubling of lossy footage: every other step near 55 dB between real steps near 25 dB
    doubled = np.array([25, 55, 26, 56, 24, 57, 56, 25, 54, 27], dtype=float)
    assert [windows.step_kind(doubled, j) for j in range(len(doubled))] == [0, 1, 0, 1, 0, 1, 1, 0, 1, 0]
    slow = np.array([52, 54, 55, 57, 59, 61, 60, 58], dtype=float)  # a person barely moving
    assert all(windows.step_kind(slow, j) == windows.OK for j in range(len(slow)))
    still = np.array([30, 100, 100, 100, 100, 100], dtype=float)  # motion, then nothing moves
    assert [windows.step_kind(still, j) for j in range(len(still))] == [0, 1, 0, 0, 0, 0]
    # a cut beside a step does not make that step a spike
    assert windows.step_kind(np.array([30, 9, 31, 30.0]), 2) == windows.OK
    assert windows.clean_starts(doubled, 3).tolist() == [False] * 9
    assert windows.clean_starts(slow, 3).all()


def test_real_clips_repeats_and_cuts_are_found_and_their_slow_motion_kept(real_clips):
    def kinds(name):
        video = next(v for v in list_videos("videofolder", real_clips, "train") if v.video_id == name)
        steps = windows.transition_psnr(windows.stored_frames(video, (SIDE, SIDE)))
        return np.array([windows.step_kind(steps, j) for j in range(len(steps))])

    makeup = kinds("ucf101_like_eye_makeup")  # every other frame repeated
    assert (makeup == windows.DUPLICATE).sum() >= 70 and not (makeup == windows.CUT).any()
    assert (kinds("street_bikes") == windows.CUT).sum() == 5  # five shots, cut together
    assert (kinds("ntu_like_S001C001P001R001A001") == windows.OK).sum() >= 99  # slow, real motion


@pytest.mark.parametrize("side", [64, 128])
def test_every_step_of_ped2s_training_videos_is_kept(ped2_dev, side):
    for video in list_videos("ped2", ped2_dev, "train"):
        steps = windows.transition_psnr(windows.stored_frames(video, (side, side)))
        kinds = [windows.step_kind(steps, j) for j in range(len(steps))]
        assert kinds == [windows.OK] * len(steps), (video.video_id, steps.min(), steps.max())
