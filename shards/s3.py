"""S3 through boto3: the endpoint from ``AWS_ENDPOINT_URL``, credentials from the standard chain.

Objects appear whole or not at all: large files go up as multipart uploads that S3 makes
visible only on completion, and a build aborts the stale multipart uploads a killed run left
under its prefix. Error messages name the bucket and what went wrong, never a credential.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

MULTIPART_THRESHOLD = 64 * 2**20  # bytes; files above go up in parts of MULTIPART_CHUNK
MULTIPART_CHUNK = 16 * 2**20


class S3Error(RuntimeError):
    """An S3 call failed; the message is one line naming the bucket or key, never a credential."""


def client():
    """An S3 client for ``AWS_ENDPOINT_URL`` (or AWS itself) with a few quick retries."""
    config = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10,
                        s3={"addressing_style": "path"})
    session = boto3.session.Session()  # a fresh credential chain: boto3's default session caches it
    return session.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


def describe(error: Exception, what: str) -> str:
    """One line for a boto error, naming ``what`` (a bucket or key) and no secret."""
    if isinstance(error, NoCredentialsError):
        return f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"{what}: no such bucket"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"{what}: access denied ({code}); check the AWS credentials and the bucket policy"
        return f"{what}: S3 error {code}"
    if isinstance(error, BotoCoreError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS")
        return f"{what}: cannot reach S3 at {endpoint} ({type(error).__name__})"
    return f"{what}: {type(error).__name__}"


def check_bucket(s3, bucket: str) -> None:
    """Fail with one line when the bucket is missing or the credentials do not open it."""
    try:
        s3.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        raise S3Error(describe(e, f"s3://{bucket}")) from None


def upload_file(s3, path: Path, bucket: str, key: str, sha256: str | None = None) -> None:
    """Upload one file (multipart above MULTIPART_THRESHOLD); it becomes visible only when whole."""
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                            max_concurrency=4)
    extra = {"Metadata": {"sha256": sha256}} if sha256 else None
    try:
        s3.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config)
    except (BotoCoreError, ClientError) as e:
        raise S3Error(describe(e, f"s3://{bucket}/{key}")) from None
    except boto3.exceptions.S3UploadFailedError as e:
        raise S3Error(f"s3://{bucket}/{key}: upload failed ({str(e).split(':')[0]})") from None


def put_bytes(s3, bucket: str, key: str, data: bytes) -> None:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    except (BotoCoreError, ClientError) as e:
        raise S3Error(describe(e, f"s3://{bucket}/{key}")) from None


def get_bytes(s3, bucket: str, key: str) -> bytes | None:
    """An object's bytes, or None when there is no such key."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
            return None
        raise S3Error(describe(e, f"s3://{bucket}/{key}")) from None
    except BotoCoreError as e:
        raise S3Error(describe(e, f"s3://{bucket}/{key}")) from None


def head(s3, bucket: str, key: str) -> dict[str, Any] | None:
    """``{"size": bytes, "sha256": ...}`` of an object, or None when there is none."""
    try:
        response = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
            return None
        raise S3Error(describe(e, f"s3://{bucket}/{key}")) from None
    info = {"size": response["ContentLength"]}
    if "sha256" in response.get("Metadata", {}):
        info["sha256"] = response["Metadata"]["sha256"]
    return info


def list_keys(s3, bucket: str, prefix: str) -> dict[str, int]:
    """Object key -> size under ``prefix``."""
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    return keys


def abort_stale_uploads(s3, bucket: str, prefix: str) -> int:
    """Abort unfinished multipart uploads under ``prefix`` (left by a killed run); return how many."""
    aborted = 0
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    except (BotoCoreError, ClientError) as e:
        raise S3Error(describe(e, f"s3://{bucket}/{prefix}")) from None
    return aborted
