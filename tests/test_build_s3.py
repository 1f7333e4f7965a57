"""shards.build to s3:// against a real SeaweedFS server on 127.0.0.1, read back with CPU DALI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layouts import write_video
from shards import s3
from shards.build import build
from shards.format import MANIFEST_NAME, VIDEO_EXT, ClipMeta
from shards.writer import BuildError

pytestmark = pytest.mark.slow  # starts an S3 server
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3_env(s3_server, monkeypatch):  # noqa: F811
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


def _videos(root: Path, lengths: list[int], hw=(24, 32)) -> Path:
    for i, n in enumerate(lengths):
        write_video(root / f"v{i:03d}.avi", n, hw=hw)
    return root


def _objects(server, prefix: str) -> dict[str, bytes]:
    client = server.client()
    keys = s3.list_keys(client, server.bucket, prefix + "/")
    return {k.removeprefix(prefix + "/"): client.get_object(Bucket=server.bucket, Key=k)["Body"].read()
            for k in keys}


def _check_objects(server, prefix: str, manifest: dict) -> dict[str, bytes]:
    """Exactly the manifest's tars, indexes and itself; every sha256 and size matches."""
    objects = _objects(server, prefix)
    names = {s["name"] for s in manifest["shards"]} | {s["index"] for s in manifest["shards"]}
    assert set(objects) == names | {MANIFEST_NAME}
    for entry in manifest["shards"]:
        data = objects[entry["name"]]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert json.loads(objects[MANIFEST_NAME])["shards"] == manifest["shards"]
    uploads = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    assert not uploads.get("Uploads"), "a multipart upload was left unfinished"
    return objects


def test_build_to_s3_multipart_and_read_back_with_dali(s3_env, tmp_path, monkeypatch):
    from nvidia.dali import fn, pipeline_def

    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 1)  # every tar goes up as a multipart upload
    root = _videos(tmp_path / "v", [9, 12, 8])
    url = f"s3://{s3_env.bucket}/dali/train"
    manifest = build("videofolder", root, url, clip_len=4, size=(16, 16), max_samples=3, progress=False,
                     work_dir=tmp_path / "work")
    assert manifest["totals"]["clips"] == 2 + 3 + 2 and len(manifest["shards"]) >= 2
    objects = _check_objects(s3_env, "dali/train", manifest)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=f"dali/train/{manifest['shards'][0]['name']}")
    assert head["ETag"].strip('"').endswith("-1")  # completed as a multipart upload
    assert not (tmp_path / "work").exists()  # staging removed

    index_paths = []
    for entry in manifest["shards"]:  # DALI takes local index files beside s3:// tars
        (tmp_path / entry["index"]).write_bytes(objects[entry["index"]])
        index_paths.append(str(tmp_path / entry["index"]))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        video, meta = fn.readers.webdataset(paths=[f"{url}/{s['name']}" for s in manifest["shards"]],
                                            index_paths=index_paths, ext=[VIDEO_EXT, "json"],
                                            missing_component_behavior="error")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    seen = set()
    for _ in range(7):
        frames, meta = p.run()
        clip = ClipMeta.from_json(bytes(np.array(meta[0])))
        assert np.array(frames[0]).shape == (4, 16, 16, 3)
        seen.add((clip.video_id, clip.first_frame))
    assert seen == {("v000", 0), ("v000", 4), ("v001", 0), ("v001", 4), ("v001", 8), ("v002", 0), ("v002", 4)}


def test_wrong_key_and_missing_bucket_fail_with_one_clear_line(s3_env, tmp_path, monkeypatch, capsys):
    from shards.build import main

    root = _videos(tmp_path / "v", [5])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-123")
    with pytest.raises(BuildError, match="access denied") as error:
        build("videofolder", root, f"s3://{s3_env.bucket}/x", clip_len=4, progress=False,
              work_dir=tmp_path / "w")
    assert "not-the-secret-123" not in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    assert main(["videofolder", "--root", str(root), "--out", "s3://no-such-bucket-zx/p", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: s3://no-such-bucket-zx: no such bucket"


def test_interrupted_upload_rerun_leaves_no_partial_object(s3_env, tmp_path):
    root = _videos(tmp_path / "v", [24] * 12, hw=(96, 128))
    prefix, work = "killed/train", tmp_path / "work"
    cmd = [sys.executable, "-m", "shards.build", "videofolder", "--root", str(root),
           "--out", f"s3://{s3_env.bucket}/{prefix}", "--clip-len", "4", "--size", "96x128",
           "--max-samples", "2", "--work-dir", str(work), "--quiet"]
    env = {**os.environ, **s3_env.env}
    client = s3_env.client()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(k.endswith(".tar") for k in s3.list_keys(client, s3_env.bucket, prefix)):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert MANIFEST_NAME not in _objects(s3_env, prefix), "the build finished before it could be interrupted"
    # what a kill in the middle of a multipart upload leaves behind: parts of an unfinished object
    stale = client.create_multipart_upload(Bucket=s3_env.bucket, Key=f"{prefix}/videofolder-train-000099.tar")
    client.upload_part(Bucket=s3_env.bucket, Key=f"{prefix}/videofolder-train-000099.tar", PartNumber=1,
                       UploadId=stale["UploadId"], Body=b"half a tar")

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "(resumed)" in again.stdout
    manifest = json.loads(_objects(s3_env, prefix)[MANIFEST_NAME])
    # make_frame's brightness wraps after 15 frames, a cut that clean windows split: 3 + 2 clips of 4
    assert manifest["totals"]["clips"] == 12 * 5
    objects = _check_objects(s3_env, prefix, manifest)
    keys = [line.split()[3] for s in manifest["shards"] for line in objects[s["index"]].decode().splitlines()[1:]]
    assert len(keys) == len(set(keys)) == 12 * 5
