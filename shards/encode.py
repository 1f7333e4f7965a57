"""Clip encoding with PyAV: RGB frames in, one Matroska file (VP9 or MJPEG) out.

Both codecs are ones DALI's ``fn.decoders.video`` decodes on the CPU as well as the GPU. The
encoders run single-threaded and without look-ahead: parallelism comes from worker processes,
and a clip of N frames must decode to exactly N frames (no hidden alt-ref frames, no drops).
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterable

import av
import numpy as np

from shards.format import CODECS

DEFAULT_FPS = 25.0  # for frame folders and files that carry no frame rate
VP9_CRF = 30
MJPEG_Q = 4  # JPEG quantiser scale, 2 (best) .. 31; 4 costs ~3x the bytes of VP9 at crf 30

# libvpx-vp9 tuned for throughput on CPU: realtime deadline, fastest speed, constant quality.
_VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": str(VP9_CRF), "b": "0",
                "row-mt": "0", "lag-in-frames": "0", "auto-alt-ref": "0", "threads": "1"}


def resize_frame(rgb: np.ndarray, size: tuple[int, int], codec: str) -> av.VideoFrame:
    """One swscale pass: RGB ``(H, W, 3)`` -> the codec's YUV format at ``size = (H, W)``."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    height, width = size
    return frame.reformat(width=width, height=height, format=pixel_format(codec), interpolation="AREA")


def pixel_format(codec: str) -> str:
    return "yuv420p" if codec == "vp9" else "yuvj420p"  # MJPEG wants full-range YUV


def encode_clip(frames: Iterable[av.VideoFrame | np.ndarray], codec: str = "vp9",
                fps: float = DEFAULT_FPS) -> bytes:
    """Encode frames of one clip into a Matroska file.

    Args:
        frames: frames from :func:`resize_frame` (already at the stored size and pixel format),
            or RGB uint8 arrays ``(H, W, 3)`` stored at their own size.
        codec: ``"vp9"`` or ``"mjpeg"``.
        fps: frame rate written into the container.

    Returns:
        The bytes of the ``.mkv`` file.
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}: expected one of {', '.join(CODECS)}")
    rate = Fraction(fps if fps and fps > 0 else DEFAULT_FPS).limit_denominator(1001)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska", options={"fflags": "+bitexact"}) as container:  # no random UID
        stream = None
        for frame in frames:
            if isinstance(frame, np.ndarray):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                frame = frame.reformat(format=pixel_format(codec))
            if stream is None:
                stream = _add_stream(container, codec, rate, frame.height, frame.width)
            frame.pts = None  # the encoder numbers frames 0, 1, 2, ... in 1/rate units
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_clip: no frames")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _add_stream(container, codec: str, rate: Fraction, height: int, width: int):
    if codec == "vp9":
        stream = container.add_stream("libvpx-vp9", rate=rate, options=dict(_VP9_OPTIONS))
    else:
        stream = container.add_stream("mjpeg", rate=rate)
        # Constant quantiser: qmin = qmax, with a bit rate high enough never to bind.
        stream.codec_context.qmin = stream.codec_context.qmax = MJPEG_Q
        stream.bit_rate = 500_000_000
    stream.height, stream.width = height, width
    stream.pix_fmt = pixel_format(codec)
    stream.thread_count = 1
    return stream
