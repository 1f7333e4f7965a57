"""Shards to torch batches: DALI loaders for training clips, donor frames and ordered evaluation.

    shards = resolve_shards("out/shards/train", fraction=0.25)
    clips = ClipLoader(shards, batch_size=8, clip_len=5, size=(256, 256), shard_id=rank, num_shards=world)
    donors = DonorLoader(resolve_shards("out/shards/ti"), batch_size=8, size=(256, 256))
    for x, o in zip(clips, donors): ...        # (B, T+1, 3, H, W), (B, 3, H, W), both in [-1, 1]

    for video_id, windows in iterate_videos(EvalLoader(resolve_shards(test), size=(256, 256)), T=4):
        for x, frame_index, label in windows: ...
"""

from zxvad.data.shardset import ShardError, ShardInfo, check_shards, checked_shards, is_lossless, resolve_shards, shard_set_quality, \
    verify_shard_set


def __getattr__(name):
    # The loaders import DALI, the windows torch; keep `import zxvad.data` light for code that only
    # resolves and checks shards (the driver, before Ray).
    if name in ("ClipLoader", "DonorLoader", "EvalLoader", "EvalClip"):
        from zxvad.data import pipelines

        return getattr(pipelines, name)
    if name in ("iterate_videos", "prediction_windows"):
        from zxvad.data import windows

        return getattr(windows, name)
    raise AttributeError(f"module 'zxvad.data' has no attribute {name!r}")


__all__ = ["ShardError", "ShardInfo", "resolve_shards", "verify_shard_set", "check_shards", "checked_shards", "shard_set_quality", "is_lossless", "ClipLoader", "DonorLoader", "EvalLoader",
           "EvalClip", "prediction_windows", "iterate_videos"]
