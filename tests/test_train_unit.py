"""zxvad.train pieces that need no Ray: run names, storage outage retries, progress lines."""

import pytest

from zxvad import config
from zxvad.run import launch, plan, worker


def test_run_name_is_stable_across_steps_and_changes_with_the_config():
    base = config.load("demo")
    longer = config.load("demo", ["train.steps=999"])
    other = config.load("demo", ["loss.alpha_N=0"])
    assert plan.default_run_name(base) == plan.default_run_name(longer)
    assert plan.default_run_name(base) != plan.default_run_name(other)
    named = config.load("demo", ["tracking.run_name=mine"])
    assert plan.default_run_name(named) == "mine"


def test_run_names_hash_renamed_keys_by_their_old_names():
    """model.T was once named model.frames: runs started under the old name keep their names and resume."""
    import hashlib

    cfg = config.load("demo", ["model.T=6"])
    # tracking.artifact_location came later and is left out, so that it changes no name either
    flat = {("model.frames" if k == "model.T" else k): v for k, v in cfg.flat().items()
            if k not in ("train.steps", "tracking.artifact_location")}
    digest = hashlib.sha256(repr(sorted(flat.items())).encode()).hexdigest()[:8]
    assert plan.default_run_name(cfg) == f"{cfg.tracking.experiment}-{digest}"


class _Trainer:
    def __init__(self, outcomes):
        self.outcomes = outcomes

    def fit(self):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_storage_outage_is_retried_from_the_last_checkpoint(monkeypatch, capsys):
    outage = OSError("When initiating multiple part upload: AWS Error NETWORK_CONNECTION during "
                     "CreateMultipartUpload operation: curlCode: 7, Could not connect to server")
    restarting = OSError("AWS Error INTERNAL_FAILURE during GetObject operation: We encountered an "
                         "internal error, please try again.")
    outcomes = [outage, restarting, "result"]
    built = []
    monkeypatch.setattr(launch, "build_trainer", lambda *a, **k: built.append(a) or _Trainer(outcomes))
    monkeypatch.setattr(launch, "STORAGE_RETRY_WAIT_S", 0.0)
    cfg = config.load("demo", ["train.max_failures=2"])
    assert launch.fit_with_storage_retries(cfg, None, "run", "", "") == "result"
    assert len(built) == 3
    assert capsys.readouterr().err.count("unreachable") == 2


def test_other_errors_and_exhausted_retries_are_raised(monkeypatch):
    monkeypatch.setattr(launch, "STORAGE_RETRY_WAIT_S", 0.0)
    cfg = config.load("demo", ["train.max_failures=1"])
    monkeypatch.setattr(launch, "build_trainer", lambda *a, **k: _Trainer([ValueError("bad loss")]))
    with pytest.raises(ValueError, match="bad loss"):
        launch.fit_with_storage_retries(cfg, None, "run", "", "")
    down = OSError("Connection refused")
    outcomes = [down, down]
    monkeypatch.setattr(launch, "build_trainer", lambda *a, **k: _Trainer(outcomes))
    with pytest.raises(OSError, match="Connection refused"):
        launch.fit_with_storage_retries(cfg, None, "run", "", "")


def test_progress_line_has_step_losses_rate_and_eta():
    progress = worker.Progress(total=100, start=0)
    progress.began -= 10.0  # ten seconds ago
    line = progress.line(20, {"l_rec": 0.5, "l_g": 0.25, "l_d": 0.125, "mask_area": 0.2})
    assert line.startswith("step 20/100 | l_rec 0.5000 l_g 0.2500 l_d 0.1250 mask_area 0.2000 |")
    assert "2.00 step/s" in line and "ETA 0m40s" in line
