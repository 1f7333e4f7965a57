"""Find a shard set and check it before DALI opens it: one clear line per problem, not a C++ trace.

A shard set is what ``shards.build`` writes (see ``shards/format.py``): ``PREFIX-%06d.tar`` with
a DALI index ``PREFIX-%06d.idx`` beside each, and ``manifest.json``, in a folder or under
``s3://bucket/prefix``. S3 paths use boto3's usual configuration (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), which DALI's S3 reader also reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from shards.format import MANIFEST_NAME, META_EXT, VIDEO_EXT, ClipMeta, index_name, shards_for_fraction
from shards.storage import is_s3, parse_s3_url

CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI's CPU video decoder reads; the GPU reads more


class ShardError(ValueError):
    """A shard set that cannot be read; the message names the shard and the remedy."""


@dataclass
class ShardInfo:
    """One checked shard: its tar and index paths, sample count and first clip's metadata."""

    path: str
    index_path: str
    samples: int
    first: ClipMeta


# -- local or S3 files ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _s3_client():
    from shards import s3  # the builder's client: AWS_ENDPOINT_URL, path-style addressing, retries

    return s3.client()


class StorageUnreachable(ConnectionError):
    """S3 did not answer (connection refused, timed out, 5xx): an outage, worth a retry of the run,
    unlike a missing object (``FileNotFoundError``) or a bad set (:class:`ShardError`)."""


def _s3_call(path: str, call):
    """``call(client, bucket, key)``; a missing object (or no credentials) raises
    ``FileNotFoundError``, a store that does not answer :class:`StorageUnreachable`."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    from shards.s3 import describe

    bucket, key = parse_s3_url(path)
    try:
        return call(_s3_client(), bucket, key)
    except ClientError as err:
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        raise (StorageUnreachable if status >= 500 else FileNotFoundError)(describe(err, path)) from None
    except (BotoConnectionError, HTTPClientError) as err:  # refused, reset, timed out
        raise StorageUnreachable(describe(err, path)) from None
    except Exception as err:  # no credentials, a bad URL: "cannot read it"
        raise FileNotFoundError(describe(err, path)) from None


def read_bytes(path: str, offset: int = 0, size: int | None = None) -> bytes:
    """Bytes of a local file or S3 object (``size`` bytes from ``offset``, or all of it)."""
    if not is_s3(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read() if size is None else f.read(size)
    extra = {"Range": f"bytes={offset}-{offset + size - 1}"} if size is not None else {}
    body = _s3_call(path, lambda s3, bucket, key: s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())
    return body[offset:] if size is None and offset else body


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_s3(base) else str(Path(base) / name)


def _exists(path: str) -> bool:
    if not is_s3(path):
        return os.path.isfile(path)
    try:
        _s3_call(path, lambda s3, bucket, key: s3.head_object(Bucket=bucket, Key=key))
        return True
    except FileNotFoundError:
        return False


# -- the public entry -------------------------------------------------------------------------------

def load_manifest(spec: str) -> tuple[dict[str, Any], str]:
    """The manifest of a shard set and the folder (or S3 prefix) its shards live in."""
    manifest_path = spec if spec.endswith(".json") else _join(spec, MANIFEST_NAME)
    try:
        manifest = json.loads(read_bytes(manifest_path))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        why = f" ({err})" if is_s3(spec) else ""
        raise ShardError(f"shards {spec}: no {MANIFEST_NAME} found at {manifest_path}{why}; "
                         "build the set with `python -m shards.build ... --out DIR`") from None
    except StorageUnreachable as err:
        raise StorageUnreachable(f"shards {spec}: {err}") from None
    except json.JSONDecodeError as err:
        raise ShardError(f"shards {spec}: {manifest_path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ShardError(f"shards {spec}: {manifest_path} has no 'shards' list")
    base = manifest_path.rsplit("/", 1)[0] if "/" in manifest_path else "."
    return manifest, base


def resolve_shards(spec: str, fraction: float = 1.0) -> list[str]:
    """Tar paths (or s3:// URLs) of a shard set, the stable prefix for ``fraction``.

    Args:
        spec: a folder or ``s3://bucket/prefix`` holding ``manifest.json``, or the manifest path.
        fraction: in (0, 1]; the nested subset of videos (``shards.format.shards_for_fraction``).

    Returns:
        The shard paths in manifest order.

    Raises:
        ShardError: no manifest, or no shard in the set or in its fraction.
    """
    if not is_s3(spec):  # absolute, so that Ray workers with another working folder agree
        spec = os.path.abspath(spec)
    manifest, base = load_manifest(spec)
    try:
        chosen = shards_for_fraction(manifest, fraction)
    except ValueError as err:
        raise ShardError(f"shards {spec}: {err}") from None
    except KeyError as err:
        raise ShardError(f"shards {spec}: manifest shard entry lacks {err}") from None
    if not chosen:
        what = "no shards" if not manifest["shards"] else f"no shard within fraction {fraction}"
        raise ShardError(f"shards {spec}: {what}; build more videos or raise the fraction")
    return [_join(base, s["name"]) for s in chosen]


def _size(path: str) -> int | None:
    """Bytes of a local file or S3 object; None when it is not there."""
    if not is_s3(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    from shards import s3

    bucket, key = parse_s3_url(path)
    try:
        info = s3.head(_s3_client(), bucket, key)
    except s3.S3Error as err:
        raise ShardError(str(err)) from None
    return None if info is None else info["size"]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    if is_s3(path):
        bucket, key = parse_s3_url(path)
        stream = _s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    else:
        stream = open(path, "rb")
    with stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_shard(base: str, entry: dict[str, Any], full_hash: bool) -> str:
    """The problem with one manifest entry's tar and index, or "" when there is none."""
    path, index_path = _join(base, entry["name"]), _join(base, entry.get("index") or index_name(entry["name"]))
    size = _size(path)
    if size is None:
        return f"shard {path}: not found"
    if size != entry.get("bytes", size):
        return f"shard {path}: {size} bytes, but the manifest records {entry['bytes']} (truncated or rewritten)"
    if _size(index_path) is None:
        return f"shard {path}: DALI index {index_path} is missing"
    index = read_bytes(index_path)
    if len(index) != entry.get("index_bytes", len(index)):  # manifests before index_bytes: not checked
        return (f"shard {path}: index {index_path} has {len(index)} bytes, but the manifest records "
                f"{entry['index_bytes']} (truncated or rewritten)")
    if "index_sha256" in entry and hashlib.sha256(index).hexdigest() != entry["index_sha256"]:
        return f"shard {path}: index {index_path} differs from the manifest's sha256 (corrupt or rewritten)"
    try:
        samples = parse_index(index.decode(errors="replace"), index_path)
    except ShardError as err:
        return str(err)
    if len(samples) != entry.get("samples", len(samples)):
        return (f"shard {path}: index {index_path} lists {len(samples)} samples, the manifest "
                f"{entry['samples']}")
    end = max((offset + length for sample in samples for offset, length in sample.values()), default=0)
    if end > size:
        return f"shard {path}: index {index_path} points {end - size} bytes past the end of the tar"
    if full_hash and "sha256" in entry and _sha256(path) != entry["sha256"]:
        return f"shard {path}: sha256 differs from the manifest's (corrupt copy)"
    return ""


def verify_shard_set(spec: str, fraction: float = 1.0, full_hash: bool = False) -> list[str]:
    """:func:`resolve_shards`, then each chosen shard checked against the manifest, cheaply.

    Every tar and index must exist, each tar must have the manifest's size and hold every
    offset its index names, each index the manifest's size and sha256 (it is read anyway, and
    small; manifests written before they were recorded are read without that check);
    ``full_hash`` also compares each tar's sha256 (reads every byte).

    Raises:
        ShardError: the first problem, naming the shard, with the remedy.
    """
    paths = resolve_shards(spec, fraction)
    manifest, base = load_manifest(spec if is_s3(spec) else os.path.abspath(spec))
    chosen = {_join(base, s["name"]): s for s in manifest["shards"]}
    entries = [chosen[p] for p in paths]
    # S3 answers a HEAD in tens of ms: ask for many shards at once so thousands stay quick
    workers = 16 if is_s3(spec) else 1
    with ThreadPoolExecutor(workers) as pool:
        for problem in pool.map(lambda e: _verify_shard(base, e, full_hash), entries):
            if problem:
                raise ShardError(f"{problem}; rebuild the set with `python -m shards.build`")
    return paths


def manifest_digest(spec: str, fraction: float = 1.0) -> str:
    """A short digest of the shards ``fraction`` reads, from their sha256 in the manifest."""
    manifest, _ = load_manifest(spec if is_s3(spec) else os.path.abspath(spec))
    try:
        chosen = shards_for_fraction(manifest, fraction)
    except (ValueError, KeyError) as err:
        raise ShardError(f"shards {spec}: {err}") from None
    joined = "\n".join(f"{s['name']} {s.get('sha256', s.get('bytes', ''))}" for s in chosen)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def stored_quality(infos: list[ShardInfo]) -> str:
    """How the clips were stored, e.g. ``"vp9 lossless"`` (several joined with ``+``)."""
    kinds = sorted({f"{i.first.codec} {i.first.quality or 'unrecorded'}" for i in infos})
    return " + ".join(kinds)


def shard_set_quality(spec: str) -> str:
    """:func:`stored_quality` of a shard set from its manifest alone (no shard is opened)."""
    manifest, _ = load_manifest(spec if is_s3(spec) else os.path.abspath(spec))
    options = manifest.get("options", {})
    return f"{options.get('codec', '?')} {options.get('quality') or 'unrecorded'}"


def is_lossless(quality: str) -> bool:
    """True when every part of a :func:`stored_quality` string is lossless."""
    return all(part.endswith(" lossless") for part in quality.split(" + "))


def parse_index(text: str, index_path: str) -> list[dict[str, tuple[int, int]]]:
    """A DALI webdataset index (``v1.2 N``, then ``ext offset size name`` per entry, one sample a
    line) as ``{ext: (offset, size)}`` per sample."""
    lines = text.strip().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1."):
        raise ShardError(f"index {index_path}: not a DALI webdataset index (first line {lines[:1]})")
    step = 4 if head[0] >= "v1.2" else 3  # v1.2 adds each entry's file name
    samples = []
    try:
        for line in lines[1:]:
            fields = line.split()
            samples.append({fields[i]: (int(fields[i + 1]), int(fields[i + 2]))
                            for i in range(0, len(fields) - 2, step)})
    except (ValueError, IndexError):
        raise ShardError(f"index {index_path}: malformed line {line!r}; rebuild the index") from None
    return samples


def check_shards(shards: list[str], *, gpu: bool) -> list[ShardInfo]:
    """Check each shard before DALI sees it: index beside it, video and meta in every sample,
    a codec the chosen decoder reads.

    Args:
        shards: tar paths or s3:// URLs, as ``resolve_shards`` returns them.
        gpu: True when decoding on the GPU ("mixed"), which also reads H.264, HEVC and AV1.

    Raises:
        ShardError: the first problem found, naming the shard and the remedy.
    """
    if not shards:
        raise ShardError("shards: the shard list is empty; pass a folder or s3:// prefix holding "
                         "manifest.json (resolve_shards) or build shards with `python -m shards.build`")
    infos = []
    for path in shards:
        if not path.endswith(".tar"):
            raise ShardError(f"shard {path}: expected a .tar WebDataset shard")
        if not _exists(path):
            raise ShardError(f"shard {path}: not found")
        index_path = index_name(path)
        if not _exists(index_path):
            raise ShardError(f"shard {path}: DALI index {index_path} is missing; rebuild the set with "
                             f"`python -m shards.build` or run `wds2idx {path} {index_path}`")
        samples = parse_index(read_bytes(index_path).decode(), index_path)
        if not samples:
            raise ShardError(f"shard {path}: holds no samples (index {index_path}); rebuild the set")
        for i, entries in enumerate(samples):
            missing = [ext for ext in (VIDEO_EXT, META_EXT) if ext not in entries]
            if missing:
                raise ShardError(f"shard {path}: sample {i} lacks its .{' and .'.join(missing)} entry "
                                 f"(has {sorted(entries) or 'nothing'}); rebuild it with `python -m shards.build`")
        offset, size = samples[0][META_EXT]
        try:
            first = ClipMeta.from_json(read_bytes(path, offset, size))
        except (ValueError, TypeError) as err:
            raise ShardError(f"shard {path}: first sample's .{META_EXT} is not clip metadata ({err})") from None
        codec = first.codec.lower().replace(".", "").replace("avc", "h264")
        if not gpu and codec not in CPU_CODECS:
            raise ShardError(f"shard {path}: clips are {first.codec}, which DALI's CPU decoder cannot read "
                             "(VP8/VP9/MJPEG only); re-shard with `--codec vp9` or run on a GPU")
        infos.append(ShardInfo(path, index_path, len(samples), first))
    return infos


def checked_shards(shards: list[str] | list[ShardInfo], *, gpu: bool) -> list[ShardInfo]:
    """:func:`check_shards` for paths; ``ShardInfo`` s, checked once already (the training
    driver does it for every worker), are taken as they are."""
    if shards and all(isinstance(s, ShardInfo) for s in shards):
        return list(shards)
    return check_shards(list(shards), gpu=gpu)
