"""How faithfully a stored clip keeps its frames: decode the bytes again, compare with the input.

Two figures, both on RGB frames converted with :func:`shards.encode.to_rgb` (DALI's own
YUV -> RGB), so they measure the codec and nothing else:

- the PSNR of each decoded frame against the frame that went into the encoder;
- the change in consecutive-frame PSNR, |PSNR(x'_t, x'_{t-1}) - PSNR(x_t, x_{t-1})|: how much
  the codec alters the frame-to-frame signal that every future-frame anomaly score is made of.

Lossless VP9 gives 100 dB (the PSNR cap for identical frames) and 0 dB. :func:`psnr` is
``zxvad.scoring.psnr`` in numpy, so the build's workers never import torch (seconds per process).
:class:`Fidelity` keeps sums, so clips, videos, buckets and resumed builds add up exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from shards.encode import decode_clip, to_rgb

PSNR_CAP = 100.0  # zxvad.scoring.psnr of identical frames
MIN_MSE = 1e-10  # zxvad.scoring.MIN_MSE: the floor that gives the cap


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB per frame of ``(N, ...)`` arrays in [-1, 1], on their [0, 1] copies (``zxvad.scoring.psnr``)."""
    diff = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) / 2
    mse = np.maximum((diff ** 2).reshape(len(diff), -1).mean(axis=1), MIN_MSE)
    return 10 * np.log10(1.0 / mse)


@dataclass
class Fidelity:
    """Sums over checked clips; :meth:`report` turns them into the manifest's figures."""

    clips: int = 0
    frames: int = 0
    psnr_sum: float = 0.0
    psnr_min: float = PSNR_CAP
    pairs: int = 0
    change_sum: float = 0.0
    change_max: float = 0.0

    def add(self, other: "Fidelity") -> "Fidelity":
        return Fidelity(self.clips + other.clips, self.frames + other.frames,
                        self.psnr_sum + other.psnr_sum, min(self.psnr_min, other.psnr_min),
                        self.pairs + other.pairs, self.change_sum + other.change_sum,
                        max(self.change_max, other.change_max))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Fidelity":
        return cls(**raw) if raw else cls()

    def report(self, sample: float) -> dict[str, Any]:
        """The manifest's ``fidelity`` entry."""
        return {"sample": sample, "clips_checked": self.clips, "frames_checked": self.frames,
                "psnr_db_mean": round(self.psnr_sum / self.frames, 3) if self.frames else None,
                "psnr_db_min": round(self.psnr_min, 3) if self.frames else None,
                "consecutive_psnr_change_db_mean":
                    round(self.change_sum / self.pairs, 4) if self.pairs else None,
                "consecutive_psnr_change_db_max": round(self.change_max, 4) if self.pairs else None}


def summary_line(report: dict[str, Any] | None) -> str:
    """One line for the build summary."""
    if not report or not report.get("frames_checked"):
        return "fidelity: no clip checked"
    exact = " (exact)" if report["psnr_db_min"] >= PSNR_CAP else ""
    clips = f"{report['clips_checked']} clip{'s' if report['clips_checked'] != 1 else ''}"
    return (f"fidelity ({clips} decoded again): PSNR to encoder input "
            f"{report['psnr_db_mean']:.2f} dB mean, {report['psnr_db_min']:.2f} dB min{exact}; "
            f"consecutive-frame PSNR changed by {report['consecutive_psnr_change_db_mean']:.3f} dB mean, "
            f"{report['consecutive_psnr_change_db_max']:.3f} dB max")


def _as_float(frames: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` frames -> float ``(N, H, W, 3)`` in [-1, 1] (PSNR ignores the layout)."""
    return np.stack(frames).astype(np.float32) / 127.5 - 1


def measure_frames(reference, decoded) -> Fidelity:
    """Fidelity of ``decoded`` against ``reference``: arrays or CPU tensors of N >= 1 frames in [-1, 1]."""
    reference, decoded = np.asarray(reference), np.asarray(decoded)
    if reference.shape != decoded.shape:
        raise ValueError(f"fidelity: {tuple(decoded.shape)} decoded frames for a reference of "
                         f"{tuple(reference.shape)}")
    to_input = psnr(decoded, reference)
    change = np.abs(psnr(decoded[1:], decoded[:-1]) - psnr(reference[1:], reference[:-1]))
    return Fidelity(1, len(to_input), float(to_input.sum()), float(to_input.min()), len(change),
                    float(change.sum()), float(change.max()) if len(change) else 0.0)


def measure_clip(inputs: Sequence, data: bytes) -> Fidelity:
    """Decode ``data`` again and compare with the frames (``av.VideoFrame``) that were encoded."""
    decoded = decode_clip(data)
    if len(decoded) != len(inputs):
        raise ValueError(f"fidelity: the clip decodes to {len(decoded)} frames, {len(inputs)} went in")
    return measure_frames(_as_float([to_rgb(f) for f in inputs]), _as_float([to_rgb(f) for f in decoded]))
