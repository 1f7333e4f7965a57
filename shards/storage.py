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


class StagedFile:
    """A file written over time under its partial name (``tmp``), for writers that stream:
    :meth:`commit` renames it into place, :meth:`discard` removes what was written."""

    def __init__(self, path: str | Path):
        self.path, self.tmp = Path(path), partial_path(path)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds."""
    staged = StagedFile(path)
    try:
        yield staged.tmp
        staged.commit()
    finally:
        staged.discard()


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
