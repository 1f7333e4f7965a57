"""Prediction windows over ordered test clips: pure torch, so the scoring code stays DALI-free.

Test clips of one video overlap by T frames, so the windows whose last frame lies at local index
>= T of each clip cover every frame index >= T of the video exactly once (the protocol of Liu et al.:
the first T frames of a video are not scored).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch


def prediction_windows(clip, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G's inputs and targets of one test clip.

    Args:
        clip: an ``EvalClip`` (frames (L, 3, H, W), labels (L,), first_frame).
        T: frames G sees; each window holds T+1 frames and predicts its last one.

    Returns:
        windows (N, T+1, 3, H, W), absolute indices of their last frames (N,), their labels (N,),
        with N = max(L - T, 0).
    """
    frames = clip.frames
    count = max(len(frames) - T, 0)
    if count == 0:
        empty = frames.new_empty((0, T + 1, *frames.shape[1:]))
        return empty, torch.empty(0, dtype=torch.long), clip.labels[:0]
    windows = frames.unfold(0, T + 1, 1).permute(0, 4, 1, 2, 3)  # (N, 3, H, W, T+1) -> (N, T+1, 3, H, W)
    indices = clip.first_frame + torch.arange(T, len(frames))
    return windows, indices, clip.labels[T:]


def iterate_videos(loader: Iterable, T: int) -> Iterator[tuple[str, Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]]:
    """Group the windows of an ordered loader per video, like ``itertools.groupby``.

    Yields:
        ``(video_id, windows)``, where ``windows`` yields ``prediction_windows`` of each of the
        video's clips in order; consume it before advancing to the next video.
    """
    for video_id, clips in itertools.groupby(loader, key=lambda clip: clip.video_id):
        yield video_id, (prediction_windows(clip, T) for clip in clips)
