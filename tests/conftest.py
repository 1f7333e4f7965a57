"""Shared fixtures: the real clips folder and small helpers."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CLIPS = Path(os.environ.get("ZXVAD_REAL_CLIPS", ROOT.parent / "shared" / "data" / "real-clips"))
PED2_DEV = Path(os.environ.get("ZXVAD_PED2", ROOT.parent / "shared" / "data" / "ped2-dev"))


def pytest_runtest_setup(item):
    """Tests marked ``gpu`` skip, by their marker, where no CUDA device is present."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and much faster on a shared, busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_clips() -> Path:
    """The recorded test footage; skipped (with the reason) outside this project's setup."""
    if not REAL_CLIPS.is_dir():
        pytest.skip(f"real clips not found at {REAL_CLIPS} (set ZXVAD_REAL_CLIPS)")
    return REAL_CLIPS


@pytest.fixture(scope="session")
def ped2_dev() -> Path:
    """UCSD Ped2 (frames + ped2.mat): the real anomalies; skipped (with the reason) where absent."""
    if not (PED2_DEV / "ped2.mat").is_file():
        pytest.skip(f"UCSD Ped2 not found at {PED2_DEV} (frames + ped2.mat; set ZXVAD_PED2)")
    return PED2_DEV


# One SeaweedFS server for the whole session, defined here once: a fixture imported into several
# modules would start one server per module, and DALI's S3 client keeps the first endpoint it saw.
from s3server import s3_server  # noqa: E402,F401
