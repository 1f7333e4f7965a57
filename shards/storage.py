"""Where outputs go: local files that appear whole or not at all, and ``s3://`` URLs.

The one home of the temp-file-then-rename write and of S3 URL parsing, for ``shards`` and
``zxvad`` alike (it imports neither, so both may import it).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

S3_SCHEME = "s3://"


def partial_path(path: str | Path) -> Path:
    """The hidden name a file is written under before its rename."""
    path = Path(path)
    # the suffix is kept: matplotlib and FFmpeg pick the format by it
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds."""
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def is_s3(path: str | Path) -> bool:
    return str(path).startswith(S3_SCHEME)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ValueError for anything else."""
    bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
    if not is_s3(url) or not bucket:
        raise ValueError(f"{url}: expected s3://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")
