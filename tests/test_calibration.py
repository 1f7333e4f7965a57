"""Calibrated scores: the scale's arithmetic, alarm counting by hand, and calibrate -> detect
with an alarm rate on a camera whose anomaly is a pasted block (G and copy_last)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from zxvad import calibrate, calibration, detect, export

from helpers import write_checkpoint
from test_detect import T, fit_generator, scene, write_folder


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny models run fastest on one thread (the fixture lives in conftest.py)."""


def test_scale_puts_the_median_at_0_the_1_percent_line_at_1_and_keeps_its_alarm_rate():
    rng = np.random.default_rng(0)
    normal = rng.normal(30.0, 2.0, 20000)
    scale = calibration.ScoreScale.fit(normal)
    assert scale.score(np.median(normal)) == pytest.approx(0.0)
    assert scale.score(np.quantile(normal, 0.01)) == pytest.approx(1.0)
    assert scale.threshold(0.01) == pytest.approx(1.0)
    fresh = scale.score(rng.normal(30.0, 2.0, 200000))  # the same camera, another day
    for rate in (0.001, 0.01, 0.03, 0.05):  # 0.03 lies between the stored levels
        assert (fresh >= scale.threshold(rate)).mean() == pytest.approx(rate, rel=0.15)
    back = calibration.ScoreScale.from_dict(json.loads(json.dumps(scale.as_dict())))
    assert back.threshold(0.03) == pytest.approx(scale.threshold(0.03))


def test_too_little_footage_and_rates_it_cannot_support_are_clear_errors():
    with pytest.raises(calibration.CalibrationError, match="at least 100 scored normal frames, got 50"):
        calibration.ScoreScale.fit(np.linspace(20, 30, 50))
    scale = calibration.ScoreScale.fit(np.linspace(20, 30, 500))  # 1/500 = 0.002 at best
    with pytest.raises(calibration.CalibrationError, match="--alarm-rate 0.001: .*500 normal frames"):
        scale.threshold(0.001)


def test_alarm_report_counts_false_alarms_frames_and_events_by_hand():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1])  # events: frames 2-3, 5, 8-9
    alarms = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 1])
    r = calibration.alarm_report([(alarms, labels), (np.zeros(3), np.zeros(3))])
    assert (r.normal_frames, r.false_alarms) == (8, 1)
    assert (r.abnormal_frames, r.detected_frames) == (5, 3)
    assert (r.events, r.detected_events) == (3, 2)
    assert r.false_alarm_rate == pytest.approx(1 / 8) and r.event_detection_rate == pytest.approx(2 / 3)
    assert calibration.events(np.array([1, 1, 0, 1])) == [(0, 2), (3, 4)]


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    """A fitted tiny G, two normal recordings of its camera, one with a pasted block, labels."""
    tmp = tmp_path_factory.mktemp("camera")
    first, last = 40, 60
    frames = scene(100, anomaly=(first, last))
    normal = [i for i in range(100) if not first <= i <= last]
    ckpt = write_checkpoint(tmp / "fitted", fit_generator(frames, normal))
    day1 = write_folder(scene(64, seed=1), tmp / "day1")
    day2 = write_folder(scene(100, seed=2)[36:], tmp / "day2")  # later in the drift
    test = write_folder(frames, tmp / "test")
    labels = tmp / "test.txt"
    labels.write_text(" ".join("1" if first <= i <= last else "0" for i in range(100)))
    return {"ckpt": ckpt, "normal": [day1, day2], "test": test, "labels": labels, "tmp": tmp}


def test_calibrate_then_detect_at_an_alarm_rate(camera, tmp_path, capsys):
    rc = calibrate.main([str(p) for p in camera["normal"]] + ["--checkpoint", str(camera["ckpt"]),
                                                              "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    stored = camera["ckpt"] / calibration.CALIBRATION_FILE
    assert f"wrote {stored}" in out and "alarm rate -> threshold" in out
    cal = calibration.load(stored)
    assert cal.scale("G").frames == (64 - T) + (64 - T) and set(cal.scales) == {"G", "copy_last"}

    rc = detect.main([str(camera["test"]), "--checkpoint", str(camera["ckpt"]), "--out",
                      str(tmp_path), "--alarm-rate", "0.05", "--labels", str(camera["labels"]),
                      "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads((tmp_path / "test.json").read_text())
    assert report["normalisation"] == "calibrated"
    psnr, score = np.array(report["frames"]["psnr"]), np.array(report["frames"]["score"])
    g = cal.scale("G")
    assert score == pytest.approx((g.median - psnr) / g.scale)  # an absolute scale, not min-max
    assert report["threshold"] == pytest.approx(g.threshold(0.05))
    assert np.array(report["frames"]["minmax_score"]).max() == pytest.approx(1.0)  # kept for viewing
    rows = list(csv.DictReader(open(tmp_path / "test.csv")))
    assert float(rows[0]["score"]) == pytest.approx(score[0], abs=1e-6)

    assert "alarms at alarm rate 0.05" in out
    line = next(x for x in out.splitlines() if x.startswith("G "))
    false_alarms, frames_found, events_found = (float(v) for v in line.split()[1:4])
    assert false_alarms <= 15 and frames_found >= 60 and events_found == 100
    assert any(x.startswith("copy_last ") for x in out.splitlines())


def test_alarm_rate_without_calibration_and_with_threshold_are_one_line_errors(tmp_path, capsys):
    bare = write_checkpoint(tmp_path / "bare")
    folder = write_folder(scene(12), tmp_path / "cam")
    rc = detect.main([str(folder), "--checkpoint", str(bare), "--alarm-rate", "0.01",
                      "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --alarm-rate needs a calibration: none beside '{bare}' "
                               "(run `python -m zxvad.calibrate --checkpoint CKPT NORMAL_FOOTAGE...`, "
                               "or give --calibration FILE)"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        detect.parse_args([str(folder), "--checkpoint", str(bare), "--alarm-rate", "0.01",
                           "--threshold", "1"])
    assert "give one of them" in capsys.readouterr().err
    rc = calibrate.main([str(folder), "--checkpoint", str(bare), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: calibration needs at least 100 scored normal frames, got 8"]
    assert not (bare / calibration.CALIBRATION_FILE).exists()


def test_detect_runs_a_torchscript_export_with_its_calibration(camera, tmp_path, capsys):
    calibrate.main([str(p) for p in camera["normal"]] + ["--checkpoint", str(camera["ckpt"]),
                                                         "--no-progress"])
    assert export.main(["--checkpoint", str(camera["ckpt"]), "--format", "torchscript",
                        "--out", str(tmp_path / "g.pt")]) == 0
    assert (tmp_path / ("g.pt." + calibration.CALIBRATION_FILE)).exists()
    capsys.readouterr()
    for name, model in (("ckpt", camera["ckpt"]), ("export", tmp_path / "g.pt")):
        rc = detect.main([str(camera["test"]), "--checkpoint", str(model), "--out",
                          str(tmp_path / name), "--alarm-rate", "0.05", "--no-progress"])
        assert rc == 0, capsys.readouterr().err
    a, b = (json.loads((tmp_path / n / "test.json").read_text()) for n in ("ckpt", "export"))
    assert b["normalisation"] == "calibrated"
    assert np.array(b["frames"]["psnr"]) == pytest.approx(np.array(a["frames"]["psnr"]), abs=1e-3)
    assert b["threshold"] == pytest.approx(a["threshold"])
