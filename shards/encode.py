"""Clip encoding with PyAV: RGB frames in, one Matroska file (VP9 or MJPEG) out.

Both codecs are ones DALI's ``fn.decoders.video`` decodes on the CPU as well as the GPU. The
encoders run single-threaded and without look-ahead: parallelism comes from worker processes,
and a clip of N frames must decode to exactly N frames (no hidden alt-ref frames, no drops).

Fidelity is a named choice (``QUALITIES``): ``lossless`` (VP9 profile 0 with libvpx's lossless
mode: the decoder returns the encoder's 4:2:0 YUV input bit for bit), ``high`` and ``compact``.
:func:`to_rgb` is the YUV -> RGB conversion DALI's CPU decoder applies, so a reference made from
the encoder's input with it differs from DALI's output by the codec alone.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterable

import av
import numpy as np

from shards.format import CODECS

DEFAULT_FPS = 25.0  # for frame folders and files that carry no frame rate
QUALITIES = ("lossless", "high", "compact")
VP9_CRF = {"high": 10, "compact": 30}  # constant quality; see the `zxvad.bench codec` table
MJPEG_Q = {"high": 2, "compact": 4}  # JPEG quantiser scale, 2 (best) .. 31; no lossless MJPEG in DALI
# swscale flags that reproduce DALI's CPU decoder bit for bit: bilinear, accurate rounding, full chroma
DALI_SWS_FLAGS = 0x2 | 0x40000 | 0x2000

# libvpx-vp9 tuned for throughput on CPU: realtime deadline, fastest speed, constant quality.
# lossless=1 at cpu-used 8 is as exact as at slower speeds and encodes 64x64 at ~4000 frames/s.
_VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "b": "0", "row-mt": "0",
                "lag-in-frames": "0", "auto-alt-ref": "0", "threads": "1"}


def resize_frame(rgb: np.ndarray, size: tuple[int, int], codec: str) -> av.VideoFrame:
    """One swscale pass: RGB ``(H, W, 3)`` -> the codec's YUV format at ``size = (H, W)``."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    height, width = size
    return frame.reformat(width=width, height=height, format=pixel_format(codec), interpolation="AREA")


def pixel_format(codec: str) -> str:
    return "yuv420p" if codec == "vp9" else "yuvj420p"  # MJPEG wants full-range YUV


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a YUV frame, converted exactly as DALI's CPU video decoder does."""
    return frame.reformat(format="rgb24", interpolation=DALI_SWS_FLAGS).to_ndarray()


def check_quality(codec: str, quality: str) -> None:
    """Raise ``ValueError`` (one line) for a codec or quality the encoder does not offer."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}: expected one of {', '.join(CODECS)}")
    if quality not in QUALITIES:
        raise ValueError(f"quality {quality!r}: expected one of {', '.join(QUALITIES)}")
    if codec == "mjpeg" and quality == "lossless":
        raise ValueError("quality 'lossless' needs --codec vp9 (DALI decodes no lossless JPEG)")


def encode_clip(frames: Iterable[av.VideoFrame | np.ndarray], codec: str = "vp9",
                fps: float = DEFAULT_FPS, quality: str = "high", keyframe_interval: int = 0) -> bytes:
    """Encode frames of one clip into a Matroska file.

    Args:
        frames: frames from :func:`resize_frame` (already at the stored size and pixel format),
            or RGB uint8 arrays ``(H, W, 3)`` stored at their own size.
        codec: ``"vp9"`` or ``"mjpeg"``.
        fps: frame rate written into the container.
        quality: ``"lossless"`` (VP9 only), ``"high"`` or ``"compact"``.
        keyframe_interval: VP9: a keyframe every this many frames, exactly (0: the first frame
            only, up to libvpx's own maximum distance). MJPEG frames are all keyframes.

    Returns:
        The bytes of the ``.mkv`` file.
    """
    check_quality(codec, quality)
    rate = Fraction(fps if fps and fps > 0 else DEFAULT_FPS).limit_denominator(1001)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska", options={"fflags": "+bitexact"}) as container:  # no random UID
        stream = None
        for frame in frames:
            if isinstance(frame, np.ndarray):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                frame = frame.reformat(format=pixel_format(codec))
            if stream is None:
                stream = _add_stream(container, codec, quality, rate, frame.height, frame.width,
                                     keyframe_interval)
            frame.pts = None  # the encoder numbers frames 0, 1, 2, ... in 1/rate units
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_clip: no frames")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _add_stream(container, codec: str, quality: str, rate: Fraction, height: int, width: int,
                keyframe_interval: int = 0):
    if codec == "vp9":
        level = {"lossless": "1"} if quality == "lossless" else {"crf": str(VP9_CRF[quality])}
        if keyframe_interval > 0:  # fixed spacing: libvpx may place none nearer than keyint_min
            level.update(g=str(keyframe_interval), keyint_min=str(keyframe_interval))
        stream = container.add_stream("libvpx-vp9", rate=rate, options={**_VP9_OPTIONS, **level})
    else:
        stream = container.add_stream("mjpeg", rate=rate)
        # Constant quantiser: qmin = qmax, with a bit rate high enough never to bind.
        stream.codec_context.qmin = stream.codec_context.qmax = MJPEG_Q[quality]
        stream.bit_rate = 500_000_000
    stream.height, stream.width = height, width
    stream.pix_fmt = pixel_format(codec)
    stream.thread_count = 1
    return stream


def decode_clip(data: bytes) -> list[av.VideoFrame]:
    """The frames of one encoded clip, in the codec's own YUV format."""
    with av.open(io.BytesIO(data)) as container:
        return list(container.decode(video=0))
