"""zxvad.bench curve: a run's gain over the baselines against minutes, read back from MLflow."""

import json

import pytest

from zxvad.bench.__main__ import main


def _run_with_evaluations(uri, steps_gains):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("curve"))
    start = run.info.start_time
    for i, (step, gain) in enumerate(steps_gains):
        stamp = start + (i + 1) * 90_000  # an evaluation every 1.5 minutes
        for key, value in (("auc/real", 0.9 + gain), ("auc_gain/real", gain),
                           ("auc/mean", 0.9 + gain), ("auc_gain/mean", gain)):
            client.log_metric(run.info.run_id, key, value, timestamp=stamp, step=step)
    return run.info.run_id


def test_curve_prints_gain_per_evaluation_and_draws_it(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _run_with_evaluations(uri, [(100, -0.05), (200, -0.01), (300, 0.02)])
    out = tmp_path / "curve.png"
    assert main(["curve", "--run", run_id, "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(printed.strip().splitlines()[-1])
    assert [r["step"] for r in figures["rows"]] == [100, 200, 300]
    assert [r["minutes"] for r in figures["rows"]] == [1.5, 3.0, 4.5]
    assert [r["real"]["gain"] for r in figures["rows"]] == [-5.0, -1.0, 2.0]
    assert figures["rows"][2]["real"]["G"] == pytest.approx(92.0)
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_curve_needs_two_evaluations(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _run_with_evaluations(uri, [(300, 0.01)])
    assert main(["curve", "--run", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "c.png")]) == 2
    assert "eval.eval_every" in capsys.readouterr().err
