"""Tiny on-disk fixtures of every dataset layout that ``shards.readers`` reads.

Each ``write_*`` function writes one layout under a folder in a fraction of a second (32x24
frames, 10-16 frames a video) and returns a :class:`Layout`: the dataset name and root to pass to
``list_videos`` and, per split, what each video should come out as. Frame ``i`` of every fixture
video has mean brightness near ``frame_level(i)``, so decoders can be checked frame for frame.

    from layouts import write_layout
    layout = write_layout("ped2-frames", tmp_path)
    videos = list_videos(layout.dataset, layout.root, "test")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import av
import numpy as np
import scipy.io
from PIL import Image

FRAME_HW = (24, 32)


class Expected(NamedTuple):
    label_class: str
    num_frames: int
    labels: np.ndarray | None = None  # per-frame 0/1 for test videos with labels


@dataclass
class Layout:
    dataset: str  # the list_videos name
    root: Path  # the folder to pass to list_videos
    expected: dict[str, dict[str, Expected]] = field(default_factory=dict)  # split -> video_id -> Expected
    skipped: dict[str, list[str]] = field(default_factory=dict)  # split -> names the reader must skip


# ----------------------------------------------------------------------------- primitives

def frame_level(i: int) -> int:
    """Mean brightness of fixture frame ``i`` (0-based): far apart enough to survive compression."""
    return 20 + (i * 15) % 220


def make_frame(i: int, hw: tuple[int, int] = FRAME_HW, seed: int = 0) -> np.ndarray:
    """A smooth RGB frame whose mean is ``frame_level(i)`` with a small moving square."""
    h, w = hw
    img = np.full((h, w, 3), frame_level(i), np.uint8)
    x = (i * 2 + seed) % max(1, w - 6)
    img[4:10, x:x + 6] = np.clip(frame_level(i) + 30, 0, 255)
    return img


def write_frames(folder: Path, n: int, *, ext: str = "jpg", digits: int = 3, start: int = 0,
                 hw: tuple[int, int] = FRAME_HW, gray: bool = False) -> list[Path]:
    """``folder/{start:0{digits}}.{ext}`` ... : ``n`` frames as image files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.fromarray(make_frame(i, hw))
        path = folder / f"{start + i:0{digits}d}.{ext}"
        (img.convert("L") if gray else img).save(path)
        paths.append(path)
    return paths


def write_video(path: Path, n: int, *, codec: str = "mpeg4", fps: int = 25,
                hw: tuple[int, int] = FRAME_HW) -> Path:
    """An ``n``-frame video file encoded with PyAV (container from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = hw
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.bit_rate = 800_000
        if codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(make_frame(i, hw), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def spans_to_labels(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    """1-based inclusive frame ranges -> per-frame 0/1."""
    labels = np.zeros(n, np.uint8)
    for a, b in spans:
        labels[a - 1:b] = 1
    return labels


def mat_cell(items: list[np.ndarray]) -> np.ndarray:
    """A 1xN MATLAB cell array (savemat writes an object array as a cell)."""
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def ranges_matrix(spans: list[tuple[int, int]]) -> np.ndarray:
    """The 2xK matrix of 1-based inclusive ranges that ped2.mat / avenue.mat hold per video."""
    return np.array(spans, dtype=np.float64).T.reshape(2, -1)


# ----------------------------------------------------------------------------- layouts

def write_jester(root: Path) -> Layout:
    frames = root / "20bn-jester-v1"
    train = {"1": ("Swiping Left", 12), "2": ("Thumb Up", 10), "3": ("Swiping Left", 11)}
    test = {"4": ("Thumb Up", 10)}
    for vid, (_, n) in {**train, **test}.items():
        write_frames(frames / vid, n, digits=5, start=1)
    (root / "jester-v1-train.csv").write_text("".join(f"{v};{c}\n" for v, (c, _) in train.items()))
    (root / "jester-v1-validation.csv").write_text("4;Thumb Up\n99;Thumb Up\n")  # 99 is missing
    return Layout("jester", root,
                  {"train": {v: Expected(c, n) for v, (c, n) in train.items()},
                   "test": {v: Expected(c, n) for v, (c, n) in test.items()}},
                  {"test": ["99"]})


def write_ucf101(root: Path) -> Layout:
    videos = root / "UCF-101"
    files = {"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi": 12, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": 10,
             "HandstandPushups/v_HandStandPushups_g08_c01.avi": 11, "Archery/v_Archery_g01_c02.avi": 10}
    for rel, n in files.items():
        write_video(videos / rel, n)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    # the real lists spell HandStandPushups differently from the file: matched case-insensitively
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                           "HandstandPushups/v_HandstandPushups_g08_c01.avi 37\r\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                          "Archery/v_Archery_g01_c02.avi\nArchery/v_Archery_g09_c01.avi\n")
    (lists / "trainlist02.txt").write_text("Archery/v_Archery_g01_c02.avi 3\n")
    (lists / "testlist02.txt").write_text("HandstandPushups/v_HandStandPushups_g08_c01.avi\n")
    return Layout("ucf101", root, {
        "train": {"v_ApplyEyeMakeup_g08_c01": Expected("ApplyEyeMakeup", 12),
                  "v_HandStandPushups_g08_c01": Expected("HandstandPushups", 11)},
        "test": {"v_ApplyEyeMakeup_g01_c01": Expected("ApplyEyeMakeup", 10),
                 "v_Archery_g01_c02": Expected("Archery", 10)}},
        {"test": ["v_Archery_g09_c01.avi"]})


def write_hmdb51(root: Path) -> Layout:
    videos = root / "hmdb51_org"
    clips = {"brush_hair": {"a_brush.avi": (10, "1"), "b_brush.avi": (12, "2"), "c_brush.avi": (10, "0")},
             "cartwheel": {"d_wheel.avi": (11, "1"), "e_wheel.avi": (10, "2")}}
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    expected: dict[str, dict[str, Expected]] = {"train": {}, "test": {}}
    for cls, items in clips.items():
        lines = []
        for name, (n, tag) in items.items():
            write_video(videos / cls / name, n)
            lines.append(f"{name} {tag} \n")  # the real files end lines with a space
            if tag != "0":
                expected["train" if tag == "1" else "test"][f"{cls}/{Path(name).stem}"] = Expected(cls, n)
        (splits / f"{cls}_test_split1.txt").write_text("".join(lines))
        (splits / f"{cls}_test_split2.txt").write_text("".join(f"{name} 0\n" for name in items))
    return Layout("hmdb51", root, expected)


def write_ucfcrime(root: Path) -> Layout:
    write_video(root / "Training_Normal_Videos_Anomaly" / "Normal_Videos001_x264.mp4", 12)
    write_video(root / "Training-Normal-Videos-Part-1" / "Normal_Videos002_x264.mp4", 10)  # found by name
    write_video(root / "Training_Normal_Videos_Anomaly" / "Normal_Videos004_x264.mp4", 10)  # not listed
    write_video(root / "Abuse" / "Abuse001_x264.mp4", 10)  # anomalous: never read
    lists = root / "UCF_Crimes-Train-Test-Split" / "Anomaly_Detection_splits"
    lists.mkdir(parents=True)
    (lists / "Anomaly_Train.txt").write_text(
        "Abuse/Abuse001_x264.mp4\nTraining_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4\n"
        "Training_Normal_Videos_Anomaly/Normal_Videos002_x264.mp4\n"
        "Training_Normal_Videos_Anomaly/Normal_Videos003_x264.mp4\n")  # 003 is missing
    return Layout("ucfcrime", root, {"train": {"Normal_Videos001_x264": Expected("", 12),
                                               "Normal_Videos002_x264": Expected("", 10)}},
                  {"train": ["Normal_Videos003_x264.mp4"]})


def write_shanghaitech(root: Path) -> Layout:
    base = root / "shanghaitech"
    write_video(base / "training" / "videos" / "01_001.avi", 12)
    write_video(base / "training" / "videos" / "02_001.avi", 10)
    tests = {"01_0014": (14, [(4, 9)]), "02_0128": (10, [])}
    masks = base / "testing" / "test_frame_mask"
    masks.mkdir(parents=True)
    expected = {}
    for vid, (n, spans) in tests.items():
        write_frames(base / "testing" / "frames" / vid, n)
        labels = spans_to_labels(spans, n)
        np.save(masks / f"{vid}.npy", labels.astype(np.int64))
        expected[vid] = Expected("", n, labels)
    return Layout("shanghaitech", root, {"train": {"01_001": Expected("", 12), "02_001": Expected("", 10)},
                                         "test": expected})


# The UCSD/Avenue fixtures share these videos so that every layout must give identical labels.
UCSD_TRAIN = {1: 12, 2: 10}
UCSD_TEST = {1: (12, [(5, 8)]), 2: (16, [(2, 3), (9, 16)]), 3: (10, [(1, 4)])}


def _ucsd_expected() -> dict[str, dict[str, Expected]]:
    return {"train": {f"training/{k:02d}": Expected("", n) for k, n in UCSD_TRAIN.items()},
            "test": {f"testing/{k:02d}": Expected("", n, spans_to_labels(s, n)) for k, (n, s) in UCSD_TEST.items()}}


def write_ped_original(root: Path, n: int = 2, labels: str = "mixed") -> Layout:
    """``UCSDped{n}/{Train,Test}/...*.tif``; labels from the ``.m`` file (``m``), ``_gt`` masks (``bmp``)
    or both (``mixed``: the .m lists videos 1-2, video 3 has only masks)."""
    base = root / "UCSD_Anomaly_Dataset.v1p2" / f"UCSDped{n}"
    for k, count in UCSD_TRAIN.items():
        write_frames(base / "Train" / f"Train{k:03d}", count, ext="tif", start=1, gray=True)
    m_lines = ["TestDataset = {};"]
    for k, (count, spans) in UCSD_TEST.items():
        write_frames(base / "Test" / f"Test{k:03d}", count, ext="tif", start=1, gray=True)
        if labels == "bmp" or (labels == "mixed" and k == 3):
            gt = base / "Test" / f"Test{k:03d}_gt"
            gt.mkdir()
            for i, y in enumerate(spans_to_labels(spans, count)):
                mask = np.zeros(FRAME_HW, np.uint8)
                mask[3:5, 7:9] = 255 * int(y)
                Image.fromarray(mask).save(gt / f"frame{i + 1:03d}.bmp")
        if labels == "m" or (labels == "mixed" and k != 3):
            m_lines.append(f"TestDataset{{{k}}}.gt_frame = [{', '.join(f'{a}:{b}' for a, b in spans)}];")
    if len(m_lines) > 1:
        (base / "Test" / f"UCSDped{n}.m").write_text("\n".join(m_lines) + "\n")
    return Layout(f"ped{n}", root, _ucsd_expected())


def _write_frames_layout(base: Path, name: str, digits: int) -> None:
    for k, count in UCSD_TRAIN.items():
        write_frames(base / "training" / "frames" / f"{k:02d}", count, digits=digits)
    for k, (count, _) in UCSD_TEST.items():
        write_frames(base / "testing" / "frames" / f"{k:02d}", count, digits=digits)
    gt = mat_cell([ranges_matrix(spans) for _, spans in UCSD_TEST.values()])
    scipy.io.savemat(base / f"{name}.mat", {"gt": gt})


def write_ped_frames(root: Path, n: int = 2) -> Layout:
    """``ped{n}/{training,testing}/frames/NN/*.jpg`` with ``ped{n}/ped{n}.mat``."""
    _write_frames_layout(root / f"ped{n}", f"ped{n}", 3)
    return Layout(f"ped{n}", root, _ucsd_expected())


def write_avenue_videos(root: Path) -> Layout:
    """``Avenue Dataset/{training,testing}_videos/NN.avi`` with ``ground_truth_demo/testing_label_mask``."""
    base = root / "Avenue Dataset"
    for k, count in UCSD_TRAIN.items():
        write_video(base / "training_videos" / f"{k:02d}.avi", count)
    masks = root / "ground_truth_demo" / "testing_label_mask"
    masks.mkdir(parents=True)
    for k, (count, spans) in UCSD_TEST.items():
        write_video(base / "testing_videos" / f"{k:02d}.avi", count)
        vol = []
        for y in spans_to_labels(spans, count):
            mask = np.zeros(FRAME_HW, np.uint8)
            mask[10:12, 3:6] = y
            vol.append(mask)
        scipy.io.savemat(masks / f"{k}_label.mat", {"volLabel": mat_cell(vol)})
    return Layout("avenue", root, _ucsd_expected())


def write_avenue_frames(root: Path) -> Layout:
    """``avenue/{training,testing}/frames/NN/*.jpg`` with ``avenue/avenue.mat``."""
    _write_frames_layout(root / "avenue", "avenue", 4)
    return Layout("avenue", root, _ucsd_expected())


def write_videofolder(root: Path) -> Layout:
    """Videos of several containers and a frame folder, with two optional label files."""
    write_video(root / "walk" / "a.avi", 12)
    write_video(root / "walk" / "b.mkv", 10)
    write_video(root / "run" / "c.mp4", 11, codec="mjpeg")
    write_video(root / "jump" / "deep" / "e.webm", 10, codec="libvpx-vp9")
    write_frames(root / "run" / "d", 13)
    (root / "notes.txt").write_text("not a video\n")
    a_labels = spans_to_labels([(3, 6)], 12)
    d_labels = spans_to_labels([(10, 13)], 13)
    np.save(root / "walk" / "a.npy", a_labels)
    np.save(root / "run" / "d.npy", d_labels)
    train = {"jump/deep/e": Expected("deep", 10), "run/c": Expected("run", 11), "run/d": Expected("run", 13),
             "walk/a": Expected("walk", 12), "walk/b": Expected("walk", 10)}
    test = dict(train)
    test["walk/a"] = Expected("walk", 12, a_labels)
    test["run/d"] = Expected("run", 13, d_labels)
    return Layout("videofolder", root, {"train": train, "test": test})


LAYOUTS: dict[str, Callable[[Path], Layout]] = {
    "jester": write_jester,
    "ucf101": write_ucf101,
    "hmdb51": write_hmdb51,
    "ucfcrime": write_ucfcrime,
    "shanghaitech": write_shanghaitech,
    "ped1-original": lambda root: write_ped_original(root, 1),
    "ped2-original": lambda root: write_ped_original(root, 2),
    "ped2-original-m": lambda root: write_ped_original(root, 2, "m"),
    "ped2-original-bmp": lambda root: write_ped_original(root, 2, "bmp"),
    "ped1-frames": lambda root: write_ped_frames(root, 1),
    "ped2-frames": lambda root: write_ped_frames(root, 2),
    "avenue-videos": write_avenue_videos,
    "avenue-frames": write_avenue_frames,
    "videofolder": write_videofolder,
}


def write_layout(name: str, parent: Path) -> Layout:
    """Write fixture ``name`` (a key of :data:`LAYOUTS`) into ``parent/name`` and describe it."""
    root = parent / name
    root.mkdir(parents=True, exist_ok=True)
    return LAYOUTS[name](root)
