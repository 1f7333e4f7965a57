"""Issue 17: bad input fails fast with one line and exit 2, test sets are sacred, secrets stay out.

No Ray here: every check runs on the driver (or in a helper that Ray calls), so each case is quick.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny_config, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


# -- item 3: ranges, target names, outputs inside --out ----------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.lr_g=-0.001", "'train.lr_g' = -0.001: must be positive"),
    ("train.lr_d=0", "'train.lr_d' = 0.0: must be positive"),
    ("train.beta1=1.0", "'train.beta1' = 1.0: must lie in [0, 1)"),
    ("train.beta2=-0.1", "'train.beta2' = -0.1: must lie in [0, 1)"),
    ("train.log_every=0", "'train.log_every' = 0: must be at least 1"),
    ("data.shuffle_buffer=0", "'data.shuffle_buffer' = 0"),
    ("model.disc_width=0", "'model.disc_width' = 0"),
    ("eval.top_frames=-1", "'eval.top_frames' = -1"),
    ("loss.arcface_scale=0", "'loss.arcface_scale' = 0.0"),
    ("eval.targets={a/b: x}", "target name 'a/b'"),
    ("eval.targets={..: x}", "target name '..'"),
])
def test_config_values_are_range_checked(override, message):
    from zxvad import config

    with pytest.raises(config.ConfigError, match=None) as err:
        config.load("demo", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluate_never_writes_outside_out(tmp_path, capsys):
    from zxvad import evaluate

    ckpt = write_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "a" / "b" / "out"
    code = evaluate.main(["--checkpoint", str(ckpt), "--target", f"../../escaped={tmp_path}",
                          "--out", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "target name '../../escaped'" in line
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("escaped*"))


def test_report_refuses_an_unsafe_target_name_before_writing(tmp_path):
    from zxvad import evaluate
    from zxvad.config import ConfigError

    with pytest.raises(ConfigError, match="a/b"):
        evaluate.write_report({"a/b": None}, tmp_path / "out", frames=4)
    assert not (tmp_path / "out").exists()
