"""Dataset readers: every TI and VAD layout as a list of :class:`Video` with frames and labels.

``list_videos(dataset, root, split)`` finds the videos of one split of a dataset in its usual
on-disk layout; ``read_frames(video)`` streams its RGB frames; ``probe(video)`` gives its length,
frame rate and size. The shard builder (``shards.build``) is the one caller.

Layouts (``root`` may be the dataset folder or the folder above it; list and label files are
searched for beside and a little above or below it):

- ``jester``: ``20bn-jester-v1/<id>/00001.jpg`` and ``jester-v1-{train,validation}.csv`` (``id;label``).
- ``ucf101``: ``UCF-101/<Class>/v_*.avi`` and ``ucfTrainTestlist/{train,test}list0N.txt``.
- ``hmdb51``: ``<class>/*.avi`` and ``<class>_test_splitN.txt`` (tag 1 train, 2 test, 0 unused).
- ``ucfcrime``: the normal videos listed in ``Anomaly_Train.txt`` (train split only).
- ``shanghaitech``: ``training/videos/*.avi``; ``testing/frames/<id>/*.jpg`` with
  ``testing/test_frame_mask/<id>.npy``.
- ``ped1``/``ped2``: ``UCSDped2/{Train,Test}/TestNNN/*.tif`` with ``UCSDped2.m`` frame ranges or
  ``TestNNN_gt/*.bmp`` masks; or ``ped2/{training,testing}/frames/NN/*.jpg`` with ``ped2.mat``.
- ``avenue``: ``{training,testing}_videos/NN.avi`` with ``testing_label_mask/N_label.mat``
  (``volLabel``); or ``avenue/{training,testing}/frames/NN/*.jpg`` with ``avenue.mat``.
- ``videofolder``: any tree of video files or frame folders; class = parent folder; optional
  ``<video>.npy`` per-frame labels beside a test video.
- ``demo``: the synthetic domains written by ``shards.demo`` (a domain folder, or the demo root).

UCSD and Avenue ids are ``training/NN`` and ``testing/NN`` in both of their layouts, so a video
hashes to the same fraction whichever layout it came in.

Labels are per-frame 0/1 ``uint8``. Their length is checked here for frame folders (their length
is the number of images); for video files the builder checks after decoding, with
:func:`check_labels`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import av
import numpy as np
from PIL import Image

DATASETS: tuple[str, ...] = ("jester", "ucf101", "hmdb51", "ucfcrime", "shanghaitech", "ped1", "ped2",
                             "avenue", "videofolder", "demo")
SPLITS = ("train", "test")
VIDEO_EXTS = frozenset(".avi .mp4 .mkv .webm .mov .mpg .mpeg .m4v .flv .wmv .3gp .ogv .ts .mts "
                       ".m2ts .asf .vob .mxf .y4m".split())
IMAGE_EXTS = frozenset(".jpg .jpeg .png .tif .tiff .bmp".split())
DEFAULT_FPS = 25.0  # frame folders of unknown rate
# Frame rates of the datasets that ship frame folders (their papers / readmes).
FOLDER_FPS = {"jester": 12.0, "shanghaitech": 24.0, "ped1": 10.0, "ped2": 10.0, "avenue": 25.0}
_SEARCH_FANOUT = 128  # do not descend into folders with more subfolders than this (frame/class trees)


class ReaderError(ValueError):
    """A root, list or label file that does not match its layout; the message is one line."""


@dataclass
class Video:
    """One source video of a dataset split."""

    video_id: str  # unique within the dataset and stable: the basis of fraction hashing
    source: Path | list[Path] | FrameFiles  # a video file, or the frame image files in order
    split: str  # train | test
    label_class: str = ""  # action class where the dataset has one
    labels: np.ndarray | None = None  # test sets: per-frame 0/1 uint8, one per frame
    fps: float = 0.0  # known frame rate of a frame folder; 0 = take it from the file (or DEFAULT_FPS)


class FrameFiles(Sequence):
    """The image files of one frame folder, held as the folder and one string of file names.

    A list of ``Path`` costs about 7 KB per 30-frame video: 1 GB for Jester's 148,092 folders in
    the build's driver; this costs about 0.4 KB.
    """

    __slots__ = ("folder", "_names", "_count")

    def __init__(self, folder: str | Path, names: list[str]):
        self.folder, self._names, self._count = str(folder), "/".join(names), len(names)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        names = self._names.split("/") if self._count else []
        if isinstance(index, slice):
            return [Path(self.folder, name) for name in names[index]]
        return Path(self.folder, names[index])

    def __iter__(self) -> Iterator[Path]:
        return iter(self[:])

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, FrameFiles)) else NotImplemented

    def __repr__(self) -> str:
        return f"FrameFiles({self.folder!r}, {self._count} images)"

    def __reduce__(self):
        return _frame_files, (self.folder, self._names, self._count)


def _frame_files(folder: str, names: str, count: int) -> FrameFiles:
    """Unpickle :class:`FrameFiles` without splitting its names."""
    frames = FrameFiles(folder, [])
    frames._names, frames._count = names, count
    return frames


FRAME_LISTS = (list, tuple, FrameFiles)  # a Video.source of frame images (else a video file)


class VideoInfo(NamedTuple):
    num_frames: int
    fps: float
    height: int
    width: int
    missing: int = 0  # frames the container's header declares but the file does not hold (cut short)


# ----------------------------------------------------------------------------- frames

def read_frames(video: Video) -> Iterator[np.ndarray]:
    """Stream a video's frames in order as RGB ``uint8`` arrays of shape (H, W, 3)."""
    if isinstance(video.source, FRAME_LISTS):
        for path in video.source:
            yield _read_image(path)
        return
    with _open_video(video.source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise ReaderError(f"{video.source}: cannot decode video ({e})") from None


def probe(video: Video) -> VideoInfo:
    """Length, frame rate and size of a video without decoding it where the container allows.

    For files the container's frame count is used when it agrees with the number of non-empty
    packets (AVI indexes may list dropped frames: opencv's tree.avi claims 444 frames, decodes 68);
    containers without a count (Matroska, WebM) use the packet count; otherwise frames are counted
    by decoding.
    """
    if isinstance(video.source, FRAME_LISTS):
        if not video.source:
            raise ReaderError(f"{video.video_id}: frame folder holds no images")
        height, width = _read_image(video.source[0]).shape[:2]
        return VideoInfo(len(video.source), video.fps or DEFAULT_FPS, height, width)
    with _open_video(video.source) as container:
        stream = container.streams.video[0]
        sizes = [p.size for p in container.demux(stream) if p.pts is not None or p.size]
        packets = sum(1 for size in sizes if size)
        fps = float(stream.average_rate or stream.guessed_rate or 0) or video.fps or DEFAULT_FPS
        height, width = stream.codec_context.height, stream.codec_context.width
    # dropped frames still have (empty) packets; a file cut short has fewer packets than declared
    missing = max(0, stream.frames - len(sizes)) if stream.frames else 0
    if packets and (stream.frames in (0, packets) or missing) and height and width:
        return VideoInfo(packets, fps, height, width, missing)
    count = 0
    for frame in read_frames(video):
        count += 1
        height, width = frame.shape[:2]
    return VideoInfo(count, fps, height, width, missing)


def check_labels(video: Video, num_frames: int) -> None:
    """Raise :class:`ReaderError` naming the video when its labels do not cover ``num_frames``."""
    if video.labels is not None and len(video.labels) != num_frames:
        raise ReaderError(f"video {video.video_id}: {len(video.labels)} labels for {num_frames} frames "
                          f"({_where(video.source)})")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as e:
        raise ReaderError(f"{path}: cannot read image ({e})") from None


def _open_video(path: Path):
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise ReaderError(f"{path}: cannot open video ({e})") from None
    if not container.streams.video:
        container.close()
        raise ReaderError(f"{path}: no video stream")
    return container


def _where(source: Path | list[Path]) -> Path:
    return source[0].parent if isinstance(source, FRAME_LISTS) and source else source


# ----------------------------------------------------------------------------- listing

def list_videos(dataset: str, root: str | Path, split: str = "train", *, list_split: int = 1,
                skipped: list[tuple[str, str]] | None = None) -> list[Video]:
    """The videos of one split of a dataset, in a stable order.

    Args:
        dataset: one of :data:`DATASETS`.
        root: the dataset folder (or the folder that holds it).
        split: ``train`` or ``test``.
        list_split: which official split list (1, 2 or 3) for ``ucf101`` and ``hmdb51``.
        skipped: if given, ``(path, reason)`` is appended for each listed video that is missing
            or empty (the builder records them in its manifest).

    Returns:
        The videos; test videos carry per-frame labels where the dataset has them.

    Raises:
        ReaderError: unknown dataset or split, missing root, a root that does not look like the
            layout, unreadable lists, labels that do not match a video, or no videos at all.
    """
    if dataset not in DATASETS:
        raise ReaderError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ReaderError(f"{dataset}: unknown split {split!r}: expected train or test")
    if list_split not in (1, 2, 3):
        raise ReaderError(f"{dataset}: list_split {list_split!r}: expected 1, 2 or 3")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReaderError(f"{dataset}: root {root} does not exist or is not a folder")
    log = skipped if skipped is not None else []
    videos = _READERS[dataset](root, split, list_split, log)
    if not videos:
        raise ReaderError(f"{dataset}: no {split} videos found under {root}")
    seen: set[str] = set()
    for v in videos:
        if v.video_id in seen:
            raise ReaderError(f"{dataset}: video id {v.video_id!r} appears twice under {root}")
        seen.add(v.video_id)
    return videos


def _jester(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
    name = "20bn-jester-v1"
    frames_dir = root if root.name == name else _search([root], name, dirs=True, depth=2)
    if frames_dir is None:
        raise ReaderError(f"jester: {root} does not look like Jester: expected {name}/<id>/00001.jpg")
    csv_name = {"train": "jester-v1-train.csv", "test": "jester-v1-validation.csv"}[split]
    csv = _near(frames_dir.parent, csv_name, depth=1)
    if csv is None:
        raise ReaderError(f"jester: no {csv_name} beside or above {frames_dir}")
    videos = []
    for lineno, line in _lines(csv):
        vid, sep, label = line.partition(";")
        if not sep:
            raise ReaderError(f"{csv}:{lineno}: expected 'id;label', got {line!r}")
        frames = _image_names(frames_dir / vid)
        if not frames:
            skipped.append((str(frames_dir / vid), "missing or empty frame folder"))
            continue
        videos.append(Video(vid.strip(), frames, split, label.strip(), fps=FOLDER_FPS["jester"]))
    return videos


def _ucf101(root: Path, split: str, list_split: int, skipped: list) -> list[Video]:
    videos_dir = root if root.name == "UCF-101" else _search([root], "UCF-101", dirs=True, depth=2)
    list_name = f"{split}list0{list_split}.txt"
    list_file = _near(root, list_name, depth=2)
    if videos_dir is None and list_file is not None and _search([root], "v_*.avi", depth=2):
        videos_dir = root  # class folders straight under root
    if videos_dir is None:
        raise ReaderError(f"ucf101: {root} does not look like UCF101: expected UCF-101/<Class>/v_*.avi")
    if list_file is None:
        raise ReaderError(f"ucf101: no {list_name} under {root} or its parent "
                          f"(expected ucfTrainTestlist/{list_name})")
    by_lower = None  # the lists spell some classes differently from the folders (HandStandPushups)
    videos = []
    for lineno, line in _lines(list_file):
        rel = line.split()[0].replace("\\", "/")
        if "/" not in rel:
            raise ReaderError(f"{list_file}:{lineno}: expected 'Class/v_name.avi', got {line!r}")
        path = videos_dir / rel
        if not path.is_file():
            if by_lower is None:
                by_lower = {p.relative_to(videos_dir).as_posix().lower(): p
                            for p in videos_dir.glob("*/*") if p.is_file()}
            path = by_lower.get(rel.lower())
            if path is None:
                skipped.append((str(videos_dir / rel), "listed but missing"))
                continue
        videos.append(Video(path.stem, path, split, rel.split("/")[0]))
    return videos


def _hmdb51(root: Path, split: str, list_split: int, skipped: list) -> list[Video]:
    suffix = f"_test_split{list_split}.txt"
    split_files = _search_all([root], f"*{suffix}", depth=2) or _search_all([root.parent], f"*{suffix}", depth=1)
    if not split_files:
        raise ReaderError(f"hmdb51: no <class>{suffix} split files under {root} or its parent "
                          f"(expected testTrainMulti_7030_splits/ or split files at the root)")
    classes = {f.name[: -len(suffix)]: f for f in split_files}
    class_dirs = _dirs_named([root], set(classes), depth=2)
    if not class_dirs:
        raise ReaderError(f"hmdb51: {root} holds none of the class folders named by the split files "
                          f"(e.g. {next(iter(classes))}/)")
    want = {"train": "1", "test": "2"}[split]
    videos = []
    for cls in sorted(classes):
        for lineno, line in _lines(classes[cls]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ReaderError(f"{classes[cls]}:{lineno}: expected 'name.avi 0|1|2', got {line!r}")
            if parts[1] != want:
                continue
            path = class_dirs[cls] / parts[0] if cls in class_dirs else None
            if path is None or not path.is_file():
                skipped.append((f"{cls}/{parts[0]}", "listed but missing"))
                continue
            videos.append(Video(f"{cls}/{path.stem}", path, split, cls))
    return videos


def _ucfcrime(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
    if split != "train":
        raise ReaderError("ucfcrime: only the train split (the normal videos of Anomaly_Train.txt) is read")
    list_file = _near(root, "Anomaly_Train.txt", depth=3)
    if list_file is None:
        raise ReaderError(f"ucfcrime: no Anomaly_Train.txt under {root} or its parent")
    by_name = None
    videos = []
    for _, line in _lines(list_file):
        rel = line.split()[0].replace("\\", "/")
        if not Path(rel).name.startswith("Normal_Videos"):
            continue  # anomalous training videos: not normal data
        path = root / rel
        if not path.is_file():
            if by_name is None:
                by_name = {}
                for p in root.rglob("*"):
                    if p.suffix.lower() in VIDEO_EXTS:
                        by_name.setdefault(p.name, p)
            path = by_name.get(Path(rel).name)
            if path is None:
                skipped.append((rel, "listed but missing"))
                continue
        videos.append(Video(Path(rel).stem, path, split))
    if not videos and skipped:
        raise ReaderError(f"ucfcrime: none of the normal videos listed in {list_file} exist under {root}")
    return videos


def _shanghaitech(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
    base = _base_with(root, ["training/videos", "testing/frames", "training/frames"])
    if base is None:
        raise ReaderError(f"shanghaitech: {root} does not look like ShanghaiTech: expected "
                          "training/videos/*.avi and testing/frames/<id>/*.jpg")
    fps = FOLDER_FPS["shanghaitech"]
    if split == "train":
        files = _video_files(base / "training" / "videos")
        if files:
            return [Video(p.stem, p, split) for p in files]
        return [Video(d.name, _images(d), split, fps=fps) for d in _frame_dirs(base / "training" / "frames")]
    mask_dir = base / "testing" / "test_frame_mask"
    videos = []
    for d in _frame_dirs(base / "testing" / "frames"):
        mask = mask_dir / f"{d.name}.npy"
        if not mask.is_file():
            raise ReaderError(f"shanghaitech: no labels for test video {d.name}: expected {mask}")
        video = Video(d.name, _images(d), split, labels=_load_npy(mask), fps=fps)
        check_labels(video, len(video.source))
        videos.append(video)
    return videos


def _ucsd(n: int) -> Callable:
    def read(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
        original = root if root.name == f"UCSDped{n}" else _search([root], f"UCSDped{n}", dirs=True, depth=2)
        if original is not None and (original / ("Train" if split == "train" else "Test")).is_dir():
            return _ucsd_original(original, n, split)
        frames = _base_with(root, ["training/frames", "testing/frames"], named=f"ped{n}")
        if frames is not None:
            return _frames_with_mat(frames, f"ped{n}", split)
        raise ReaderError(f"ped{n}: {root} does not look like UCSD Ped{n}: expected UCSDped{n}/Test/Test001/*.tif "
                          f"or ped{n}/testing/frames/01/*.jpg")
    return read


def _ucsd_original(base: Path, n: int, split: str) -> list[Video]:
    fps = FOLDER_FPS[f"ped{n}"]
    part = "Train" if split == "train" else "Test"
    dirs = [d for d in _frame_dirs(base / part) if re.fullmatch(rf"{part}\d+", d.name)]
    kind = "training" if split == "train" else "testing"
    videos = [Video(f"{kind}/{int(d.name[len(part):]):02d}", _images(d), split, fps=fps) for d in dirs]
    if split == "train":
        return videos
    m_file = _search([base / "Test", base], f"UCSDped{n}.m", depth=0)
    ranges = _parse_m_ranges(m_file) if m_file else {}
    for d, video in zip(dirs, videos):
        number = int(d.name[len(part):])
        if number in ranges:
            video.labels = _ranges_to_labels(ranges[number], len(video.source), f"{d.name}", m_file)
        elif (masks := _images(d.parent / f"{d.name}_gt")):
            video.labels = np.array([_read_image(p).any() for p in masks], dtype=np.uint8)
            check_labels(video, len(video.source))
        else:
            raise ReaderError(f"ped{n}: no labels for {d.name}: expected an entry in UCSDped{n}.m "
                              f"or {d.name}_gt/*.bmp")
    return videos


def _parse_m_ranges(path: Path) -> dict[int, list[tuple[int, int]]]:
    """``TestDataset{3}.gt_frame = [5:90, 140:200];`` -> {3: [(5, 90), (140, 200)]} (1-based, inclusive)."""
    ranges = {}
    text = path.read_text(errors="replace")
    for number, body in re.findall(r"\{\s*(\d+)\s*\}\s*\.gt_frame\s*=\s*\[([^\]]*)\]", text):
        if re.search(r"[^\d:,;\s]", body):
            raise ReaderError(f"{path}: bad frame ranges [{body}] for test video {number}")
        ranges[int(number)] = [(int(a), int(b or a)) for a, b in re.findall(r"(\d+)(?:\s*:\s*(\d+))?", body)]
    if not ranges:
        raise ReaderError(f"{path}: no 'TestDataset{{N}}.gt_frame = [a:b];' lines")
    return ranges


def _avenue(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
    base = _base_with(root, ["training_videos", "testing_videos"])
    if base is not None:
        kind = "training" if split == "train" else "testing"
        files = _video_files(base / f"{kind}_videos")
        videos = [Video(f"{kind}/{_two_digits(p.stem)}", p, split) for p in files]
        if split == "test":
            mask_dir = _near(root, "testing_label_mask", dirs=True, depth=3)
            if mask_dir is None:
                raise ReaderError(f"avenue: no ground_truth_demo/testing_label_mask/ under {root} or its parent")
            for p, video in zip(files, videos):
                mat = mask_dir / f"{int(p.stem) if p.stem.isdigit() else p.stem}_label.mat"
                if not mat.is_file():
                    raise ReaderError(f"avenue: no labels for test video {p.name}: expected {mat}")
                video.labels = _frame_masks_to_labels(_loadmat(mat, "volLabel"), mat)
        return videos
    frames = _base_with(root, ["training/frames", "testing/frames"], named="avenue")
    if frames is not None:
        return _frames_with_mat(frames, "avenue", split)
    raise ReaderError(f"avenue: {root} does not look like CUHK Avenue: expected testing_videos/01.avi "
                      "or avenue/testing/frames/01/*.jpg")


def _frames_with_mat(base: Path, name: str, split: str) -> list[Video]:
    """The common ``NAME/{training,testing}/frames/NN/*.jpg`` + ``NAME.mat`` layout (Liu et al. 2018)."""
    kind = "training" if split == "train" else "testing"
    fps = FOLDER_FPS.get(name, DEFAULT_FPS)
    dirs = _frame_dirs(base / kind / "frames")
    videos = [Video(f"{kind}/{d.name}", _images(d), split, fps=fps) for d in dirs]
    if split == "test" and videos:
        mat = _search([base, base.parent], f"{name}.mat", depth=1)
        if mat is None:
            raise ReaderError(f"{name}: no {name}.mat (per-video frame ranges) in {base} or its parent")
        gt = _loadmat(mat, "gt")
        cells = list(gt.ravel()) if gt.dtype == object else list(gt) if gt.ndim == 3 else None
        if cells is None or len(cells) != len(dirs):
            count = "unreadable" if cells is None else len(cells)
            raise ReaderError(f"{mat}: {count} label entries in 'gt' for {len(dirs)} test videos")
        for d, video, cell in zip(dirs, videos, cells):
            spans = np.asarray(cell, dtype=np.int64).reshape(2, -1).T
            video.labels = _ranges_to_labels(spans, len(video.source), f"{kind}/{d.name}", mat)
    return videos


def _videofolder(root: Path, split: str, _list_split: int, skipped: list) -> list[Video]:
    videos = []
    for folder, subdirs, files in os.walk(root):
        folder_path = Path(folder)
        subdirs[:] = sorted((s for s in subdirs if not s.startswith(".")), key=_natural)
        if folder_path != root and _images(folder_path):
            subdirs[:] = []  # a frame folder is one video
            videos.append(_folder_video(root, folder_path, _images(folder_path), split))
            continue
        for name in sorted(files, key=_natural):
            path = folder_path / name
            if path.suffix.lower() in VIDEO_EXTS and not name.startswith("."):
                videos.append(_folder_video(root, path, path, split))
    if not videos:
        raise ReaderError(f"videofolder: no video files or frame folders under {root}")
    return videos


def _folder_video(root: Path, path: Path, source: Path | list[Path], split: str) -> Video:
    rel = path.relative_to(root)
    video_id = rel.with_suffix("").as_posix() if isinstance(source, Path) else rel.as_posix()
    label_class = rel.parent.name  # "" at the root
    video = Video(video_id, source, split, label_class)
    label_file = path.with_suffix(".npy") if isinstance(source, Path) else path.parent / f"{path.name}.npy"
    if split == "test" and label_file.is_file():
        video.labels = _load_npy(label_file)
        if isinstance(source, list):
            check_labels(video, len(source))
    return video


def _demo(root: Path, split: str, list_split: int, skipped: list) -> list[Video]:
    """A demo domain folder (``domain.json``) or the demo root (``demo.json``: train = source, test = targets)."""
    if (root / "domain.json").is_file():
        meta = json.loads((root / "domain.json").read_text())
        return _READERS[meta["dataset"]](root, split, list_split, skipped)
    if not (root / "demo.json").is_file():
        raise ReaderError(f"demo: {root} holds neither demo.json nor domain.json "
                          "(write it with python -m shards.demo --out DIR)")
    domains = json.loads((root / "demo.json").read_text())["domains"]
    videos = []
    for name, meta in domains.items():
        if (meta["role"] == "source") != (split == "train"):
            continue
        for v in _READERS[meta["dataset"]](root / meta["path"], split, list_split, skipped):
            v.video_id = f"{name}/{v.video_id}"
            if split == "test":
                v.label_class = name  # the target domain a test video belongs to
            videos.append(v)
    return videos


_READERS: dict[str, Callable[[Path, str, int, list], list[Video]]] = {
    "jester": _jester, "ucf101": _ucf101, "hmdb51": _hmdb51, "ucfcrime": _ucfcrime,
    "shanghaitech": _shanghaitech, "ped1": _ucsd(1), "ped2": _ucsd(2), "avenue": _avenue,
    "videofolder": _videofolder, "demo": _demo,
}


# ----------------------------------------------------------------------------- helpers

def _natural(name: str | Path) -> list:
    """Sort key that puts frame 2 before frame 10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def _visible_files(folder: Path, extensions) -> list[Path]:
    """The files of ``folder`` with one of ``extensions`` (not hidden ones), in natural order."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith(".")),
                  key=lambda p: _natural(p.name))


def _images(folder: Path) -> list[Path]:
    return _visible_files(folder, IMAGE_EXTS)


def _image_names(folder: Path) -> FrameFiles:
    """``_images`` as compact :class:`FrameFiles`, for datasets of many thousands of folders."""
    try:
        names = [e.name for e in os.scandir(folder)
                 if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return FrameFiles(folder, [])
    return FrameFiles(folder, sorted(names, key=_natural))


def _frame_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that hold images, in natural order."""
    if not folder.is_dir():
        return []
    return [d for d in sorted(folder.iterdir(), key=lambda p: _natural(p.name))
            if d.is_dir() and not d.name.startswith(".") and _images(d)]


def _video_files(folder: Path) -> list[Path]:
    return _visible_files(folder, VIDEO_EXTS)


def _two_digits(stem: str) -> str:
    return f"{int(stem):02d}" if stem.isdigit() else stem


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            yield lineno, line.strip()


def _load_npy(path: Path) -> np.ndarray:
    try:
        labels = np.load(path)
    except (OSError, ValueError) as e:
        raise ReaderError(f"{path}: cannot read labels ({e})") from None
    return (np.asarray(labels).ravel() != 0).astype(np.uint8)


def _loadmat(path: Path, key: str) -> np.ndarray:
    import scipy.io  # only the UCSD/Avenue readers need it

    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as e:
        raise ReaderError(f"{path}: cannot read .mat file ({e})") from None
    if key not in data:
        raise ReaderError(f"{path}: no {key!r} variable (found {', '.join(k for k in data if not k.startswith('__'))})")
    return data[key]


def _frame_masks_to_labels(masks: np.ndarray, source: Path) -> np.ndarray:
    """A 1xF cell of HxW masks (or an HxWxF array) -> 1 where any pixel of the frame is set."""
    if masks.dtype == object:
        return np.array([np.any(m) for m in masks.ravel()], dtype=np.uint8)
    if masks.ndim == 3:
        return masks.reshape(-1, masks.shape[-1]).any(axis=0).astype(np.uint8)
    raise ReaderError(f"{source}: expected a 1xF cell of frame masks, got an array of shape {masks.shape}")


def _ranges_to_labels(spans, num_frames: int, video: str, source: Path) -> np.ndarray:
    labels = np.zeros(num_frames, dtype=np.uint8)
    for a, b in spans:
        a, b = int(a), int(b)
        if not 1 <= a <= b <= num_frames:
            raise ReaderError(f"video {video}: anomaly range {a}:{b} outside its {num_frames} frames ({source})")
        labels[a - 1:b] = 1
    return labels


def _levels(bases: list[Path], depth: int) -> Iterator[list[Path]]:
    """Folders breadth first, one list per depth; wide folders (frame or class trees) are not entered."""
    level = [b for b in dict.fromkeys(bases) if b.is_dir()]
    for _ in range(depth + 1):
        yield level
        nxt = []
        for d in level:
            try:
                subs = sorted((e.path for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")),
                              key=_natural)
            except OSError:
                continue
            if len(subs) <= _SEARCH_FANOUT:
                nxt.extend(Path(s) for s in subs)
        level = nxt


def _search_all(bases: list[Path], pattern: str, *, dirs: bool = False, depth: int = 2) -> list[Path]:
    """Entries matching ``pattern`` at the shallowest depth below ``bases`` that has any."""
    for level in _levels(bases, depth):
        found = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            found += [Path(e.path) for e in entries
                      if fnmatch.fnmatch(e.name, pattern) and (e.is_dir() if dirs else e.is_file())]
        if found:
            return sorted(found, key=lambda p: _natural(p.name))
    return []


def _search(bases: list[Path], pattern: str, *, dirs: bool = False, depth: int = 2) -> Path | None:
    found = _search_all(bases, pattern, dirs=dirs, depth=depth)
    return found[0] if found else None


def _near(root: Path, pattern: str, *, dirs: bool = False, depth: int = 2) -> Path | None:
    """The first match below ``root`` (to ``depth``), else beside it (the parent and its direct subfolders)."""
    return _search([root], pattern, dirs=dirs, depth=depth) or _search([root.parent], pattern, dirs=dirs, depth=1)


def _dirs_named(bases: list[Path], names: set[str], depth: int) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for level in _levels(bases, depth):
        for d in level:
            if d.name in names:
                found.setdefault(d.name, d)
    return found


def _base_with(root: Path, rels: list[str], named: str | None = None) -> Path | None:
    """``root`` or the shallowest folder below it (called ``named`` if given) holding any of ``rels``."""
    for level in _levels([root], 2):
        hits = [d for d in level if any((d / r).is_dir() for r in rels) and (d == root or named in (None, d.name))]
        if hits:
            return hits[0]
    return None
