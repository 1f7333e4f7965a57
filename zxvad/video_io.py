"""Streaming frames in and out for ``zxvad.detect``: any video FFmpeg reads, a frame folder or a
stream URL in; an H.264 (or MPEG-4) video out. One frame at a time, never a whole video.

A :class:`VideoSource` yields :class:`Frame` objects: the frame resized to the model's square
size (``uint8`` RGB) and, when asked, a display copy at the source's aspect ratio for overlays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from shards.storage import StagedFile

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp")  # never end
FOLDER_FPS = 25.0  # a frame folder carries no rate; this is the common VAD-dataset rate
URL_TIMEOUT_S = 10.0


class VideoError(ValueError):
    """An input that cannot be opened or decoded; the message is one line naming it."""


@dataclass
class Frame:
    index: int  # 0-based position in the stream
    time: float  # seconds since the first frame
    model: np.ndarray  # (S, S, 3) uint8 RGB at the model's size
    display: np.ndarray | None  # (h, w, 3) uint8 RGB for overlays, when asked for


def is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


def is_live(source: str) -> bool:
    """A URL whose scheme is a live protocol (RTSP, RTMP, UDP, ...): it has no end to wait for."""
    return is_url(source) and source.split("://", 1)[0].lower() in LIVE_SCHEMES


def display_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """The source's aspect at most ``max_width`` wide, both sides even (yuv420p needs that)."""
    scale = min(1.0, max_width / width)
    w, h = max(2, int(round(width * scale))), max(2, int(round(height * scale)))
    return w - w % 2, h - h % 2


def _image_files(folder: Path) -> list[Path]:
    def natural(path: Path):  # frame2 before frame10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT), key=natural)


class VideoSource:
    """Frames of one video file, stream URL or frame folder, decoded lazily.

    Args:
        source: a path FFmpeg reads, a URL (rtsp://, http://, ...) or a folder of images.
        size: the model's square frame size S.
        display_width: also make a display copy at most this wide (None: no display copies).
        max_frames: stop after this many frames (None: the whole input).
        fps: frame rate of a frame folder (videos carry their own).

    Raises:
        VideoError: the input does not exist or cannot be opened.
    """

    def __init__(self, source: str, size: int, display_width: int | None = None,
                 max_frames: int | None = None, fps: float | None = None):
        self.source = str(source)
        self.size = size
        self.display_width = display_width
        self.max_frames = max_frames
        self.live = is_live(self.source)
        self._container = None
        self._files: list[Path] | None = None
        path = Path(self.source)
        if not is_url(self.source) and not path.exists():
            raise VideoError(f"input '{self.source}': no such file or folder")
        if path.is_dir():
            self._files = _image_files(path)
            if not self._files:
                raise VideoError(f"input '{self.source}': a folder with no images "
                                 f"({', '.join(IMAGE_EXT)})")
            self.fps = float(fps or FOLDER_FPS)
            self.total = len(self._files)
            self.name = path.resolve().name
        else:
            self._open_container(fps)
            self.name = _safe_name(self.source)
        if max_frames is not None:
            self.total = min(self.total, max_frames) if self.total else max_frames

    def _open_container(self, fps: float | None) -> None:
        import av

        try:
            options = {"timeout": URL_TIMEOUT_S} if is_url(self.source) else {}
            self._container = av.open(self.source, **options)
            streams = self._container.streams.video
            if not streams:
                raise VideoError(f"input '{self.source}': has no video stream")
        except VideoError:
            self.close()
            raise
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            self.close()
            raise VideoError(f"input '{self.source}': cannot be read as video "
                             f"({_one_line(err)})") from None
        self._stream = streams[0]
        self._stream.thread_type = "AUTO"  # frame and slice threads: decoding is the CPU's bottleneck
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(fps or (rate if rate else FOLDER_FPS))
        self.total = int(self._stream.frames or 0) or None

    def __iter__(self) -> Iterator[Frame]:
        frames = self._folder_frames() if self._files is not None else self._video_frames()
        for frame in frames:
            if self.max_frames is not None and frame.index >= self.max_frames:
                break
            yield frame

    def _video_frames(self) -> Iterator[Frame]:
        import av

        start, previous = None, None
        index = 0
        try:
            for vf in self._container.decode(self._stream):
                t = vf.time
                if t is None:
                    t = index / self.fps
                # AVI with B-frames stores decode times as presentation times: keep time increasing
                if previous is not None and t <= previous:
                    t = previous + 1 / self.fps
                start, previous = (t if start is None else start), t
                model = vf.to_ndarray(width=self.size, height=self.size, format="rgb24")
                display = None
                if self.display_width:
                    w, h = display_size(vf.width, vf.height, self.display_width)
                    display = vf.to_ndarray(width=w, height=h, format="rgb24")
                yield Frame(index, max(0.0, t - start), model, display)
                index += 1
        except av.FFmpegError as err:
            raise VideoError(f"input '{self.source}': decoding failed at frame {index} "
                             f"({_one_line(err)})") from None

    def _folder_frames(self) -> Iterator[Frame]:
        from PIL import Image, UnidentifiedImageError

        for index, path in enumerate(self._files):
            try:
                with Image.open(path) as im:
                    rgb = im.convert("RGB")
            except (UnidentifiedImageError, OSError) as err:
                raise VideoError(f"input '{path}': cannot be read as an image ({_one_line(err)})") from None
            model = np.array(rgb.resize((self.size, self.size), Image.BILINEAR))
            display = None
            if self.display_width:
                w, h = display_size(rgb.width, rgb.height, self.display_width)
                display = np.array(rgb.resize((w, h), Image.BILINEAR))
            yield Frame(index, index / self.fps, model, display)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Write RGB frames to an H.264 video (MPEG-4 Part 2 where this FFmpeg lacks libx264).

    Frames go to a hidden ``.partial`` file (a :class:`StagedFile`) renamed into place by :meth:`finish`;
    :meth:`abort` deletes it, so no half-written video is ever left behind.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        import av

        self._file = StagedFile(path)
        self.path = self._file.path
        self._container = av.open(str(self._file.tmp), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        rate = Fraction(fps).limit_denominator(1001) if math.isfinite(fps) and fps > 0 else Fraction(25)
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def finish(self) -> Path:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._file.commit()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # already broken; the file goes anyway
            pass
        self._file.discard()


def _safe_name(source: str) -> str:
    """A file-name stem for a source: the video's stem, or the URL's last path part."""
    if is_url(source):
        tail = source.split("://", 1)[1].split("?", 1)[0].rstrip("/")
        stem = Path(tail.rsplit("/", 1)[-1]).stem or tail.split("/", 1)[0]
    else:
        stem = Path(source).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "stream"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
