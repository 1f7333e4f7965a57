"""Shared fixtures: the real clips folder and small helpers."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CLIPS = Path(os.environ.get("ZXVAD_REAL_CLIPS", ROOT.parent / "shared" / "data" / "real-clips"))
PED2_DEV = Path(os.environ.get("ZXVAD_PED2", ROOT.parent / "shared" / "data" / "ped2-dev"))


_EXIT_STATUS = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's own status once every report is written.

    The interpreter's teardown after the summary runs the native libraries' exit paths (DALI's
    thread pools, Ray's gRPC threads, torch): once in CI (stop 31) it crashed with a segmentation
    fault after "1 failed, 494 passed", and make read the crash, not the result. No test runs
    there, so it is skipped; ``ZXVAD_TEST_TEARDOWN=1`` keeps it (with PYTHONFAULTHANDLER=1, as
    ``make test`` sets, a crash there prints every thread's stack).
    """
    if _EXIT_STATUS is None or os.environ.get("ZXVAD_TEST_TEARDOWN") == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS)


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
