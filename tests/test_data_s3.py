"""zxvad.data reading shards from S3 (a SeaweedFS server on 127.0.0.1) through DALI's S3 reader."""

import os

import pytest

from helpers import TRAIN_VIDEOS, built_set, read_pattern

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_train_set(s3_server, tmp_path_factory):  # noqa: F811
    """The tiny training set uploaded under s3://BUCKET/data-train, with the S3 environment set."""
    local = built_set(tmp_path_factory.mktemp("s3train"), [12] * TRAIN_VIDEOS, "train", "vp9", clip_len=12)
    client = s3_server.client()
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), s3_server.bucket, f"data-train/{path.name}")
    saved = {k: os.environ.get(k) for k in s3_server.env}
    os.environ.update(s3_server.env)  # what DALI's S3 reader and boto3 both read
    try:
        yield f"s3://{s3_server.bucket}/data-train", local
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_clip_loader_reads_s3_shards(s3_train_set):
    from zxvad.data import ClipLoader, EvalLoader, resolve_shards

    url, local = s3_train_set
    shards = resolve_shards(url)
    assert shards == [f"{url}/{p.name}" for p in sorted(local.glob("*.tar"))]
    seen = set()
    loader = ClipLoader(shards, batch_size=4, clip_len=5, size=(16, 16), threads=1, shuffle_buffer=8)
    it = iter(loader)
    for _ in range(loader.steps_per_epoch):
        x = next(it)
        assert x.shape == (4, 5, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
        index, video = read_pattern(x)
        assert (index.diff(dim=1) == 1).all()
        seen |= set(video[:, 0].tolist())
    assert seen == set(range(TRAIN_VIDEOS))  # one epoch of the S3 set holds every video
    clips = list(EvalLoader(shards, size=(16, 16), threads=1))
    assert sorted(c.video_id for c in clips) == [f"v{v}" for v in range(TRAIN_VIDEOS)]


def test_missing_s3_index_names_shard(s3_train_set):
    from shards import s3
    from zxvad.data import ShardError, DonorLoader, resolve_shards

    url, _ = s3_train_set
    shards = resolve_shards(url)
    client = s3.client()
    bucket, key = shards[0][len("s3://"):].split("/", 1)
    index_key = key[:-len(".tar")] + ".idx"
    saved = client.get_object(Bucket=bucket, Key=index_key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=index_key)
    try:
        with pytest.raises(ShardError, match=rf"shard {shards[0]}: DALI index s3://{bucket}/{index_key} is missing"):
            DonorLoader(shards, batch_size=2, size=(16, 16))
    finally:
        client.put_object(Bucket=bucket, Key=index_key, Body=saved)
    nothing = url.rsplit("/", 1)[0] + "/nothing"
    with pytest.raises(ShardError, match=rf"shards {nothing}: no manifest.json found"):
        resolve_shards(nothing)
