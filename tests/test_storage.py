"""shards.storage: files appear whole or not at all; s3:// URLs parse one way everywhere."""

import pytest

from shards.storage import StagedFile, atomic_path, atomic_write, is_s3, parse_s3_url, partial_path


def test_atomic_write_replaces_whole_and_leaves_no_partial(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    assert atomic_write(target, '{"new": 1}') == target
    assert target.read_text() == '{"new": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp == partial_path(target) and tmp.name == ".plot.partial.png"
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_a_staged_file_streams_under_its_partial_name_until_committed(tmp_path):
    rows = StagedFile(tmp_path / "clip.csv")
    with open(rows.tmp, "w") as f:
        f.write("frame,score\n")
        assert not rows.path.exists() and rows.tmp.name == ".clip.partial.csv"
        f.write("4,0.5\n")
    assert rows.commit() == tmp_path / "clip.csv"
    assert rows.path.read_text() == "frame,score\n4,0.5\n"
    dropped = StagedFile(tmp_path / "other.csv")
    dropped.tmp.write_text("half")
    dropped.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.csv"]


@pytest.mark.parametrize("url, expected", [
    ("s3://bucket", ("bucket", "")),
    ("s3://bucket/a/b/", ("bucket", "a/b")),
    ("s3://bucket/shards/x-000000.tar", ("bucket", "shards/x-000000.tar")),
])
def test_parse_s3_url(url, expected):
    assert is_s3(url)
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "/data/shards", "http://host/bucket"])
def test_parse_s3_url_rejects_what_is_not_one(url):
    with pytest.raises(ValueError, match="expected s3://BUCKET"):
        parse_s3_url(url)
