"""Clean training windows: no repeated frames, no scene cuts.

Future-frame prediction learns motion from consecutive frames. Real TI footage holds exact
duplicates (frame-rate conversion: PSNR far above any real change) and scene cuts (PSNR near
that of unrelated images); a window holding either teaches G that the next frame is a copy or a
new scene. ``transition_psnr`` measures each step between consecutive frames; ``clean_starts``
marks the window starts whose every step lies inside [low, high] dB.
"""

from __future__ import annotations

import numpy as np

DUPLICATE_DB = 60.0  # above: a repeated (or all but repeated) frame
CUT_DB = 18.0  # below: a scene cut


def transition_psnr(frames: np.ndarray) -> np.ndarray:
    """PSNR in dB between each pair of consecutive frames (uint8, (N, H, W[, C])); (N-1,).

    Identical frames read 100 dB (the cap of :mod:`zxvad.scoring`).
    """
    f = np.asarray(frames)
    if f.ndim < 3 or len(f) < 2:
        return np.zeros(0)
    a = f[1:].astype(np.float32) / 255.0
    b = f[:-1].astype(np.float32) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def clean_starts(step_psnr: np.ndarray, window: int, low: float = CUT_DB,
                 high: float = DUPLICATE_DB) -> np.ndarray:
    """Bool mask over window starts 0..N-window: True where all window-1 steps lie in [low, high].

    Args:
        step_psnr: (N-1,) from :func:`transition_psnr`.
        window: frames per window (T + 1).
    """
    if window < 1:
        raise ValueError(f"clean_starts: window {window} must be at least 1")
    n = len(step_psnr) + 1
    if n < window:
        return np.zeros(0, dtype=bool)
    bad = ~((step_psnr >= low) & (step_psnr <= high))
    if window == 1:
        return np.ones(n, dtype=bool)
    counts = np.concatenate([[0], np.cumsum(bad)])
    return (counts[window - 1:] - counts[:n - window + 1]) == 0
