"""tune.compare on MLflow runs logged here into a tmp sqlite store: grouping, values, outputs."""

import csv
import math
import statistics

import pytest

from tune import compare
from zxvad import names

# config (fraction) -> seed -> (street AUC, plaza AUC); fraction 0.25 and 1.0 are within spread
AUCS = {
    0.0125: [(0.60, 0.55), (0.62, 0.57), (0.58, 0.53)],
    0.25: [(0.80, 0.70), (0.74, 0.78), (0.83, 0.66)],
    1.0: [(0.82, 0.74), (0.81, 0.73), (0.83, 0.75)],
}


def _log_runs(uri, experiment, aucs, extra_params=None):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    for fraction, seeds in aucs.items():
        for seed, (street, plaza) in enumerate(seeds):
            run = client.create_run(exp_id, run_name=f"f{fraction}-s{seed}",
                                    tags={names.SWEEP_TAG: experiment})
            params = {"data.fraction": fraction, "train.seed": seed, "data.seed": seed,
                      "model.backbone_seed": seed, "tracking.run_name": f"f{fraction}-s{seed}",
                      "data.train_shards": "s3://bucket/zxvad/shards/ucf101/train",
                      "model.width": 4, **(extra_params or {})}
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value)
            # an earlier, worse evaluation: the table must use the final one
            client.log_metric(run.info.run_id, "auc/street", 0.5, step=4)
            client.log_metric(run.info.run_id, "auc/street", street, step=8)
            client.log_metric(run.info.run_id, "auc/plaza", plaza, step=8)
            client.log_metric(run.info.run_id, "auc/mean", (street + plaza) / 2, step=8)
            client.log_metric(run.info.run_id, "loss/l_rec", 0.1, step=8)
    # the sweep-level run holds no training and must not become a row
    sweep = client.create_run(exp_id, run_name="sweep", tags={names.ROLE_TAG: "sweep"})
    client.log_metric(sweep.info.run_id, "auc/mean", 0.99)
    # a run that never evaluated is left out too
    client.create_run(exp_id, run_name="no-eval")
    return client, exp_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds): two experiments."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client, exp_id = _log_runs(uri, "ti-fraction-test", AUCS)
    _log_runs(uri, "one-seed", {0.1: [(0.7, 0.6)], 0.5: [(0.71, 0.65)]},
              extra_params={"loss.alpha_n": 1.0})
    return uri, client, exp_id


def test_table_groups_seeds_and_matches_mlflow(store):
    uri, client, exp_id = store
    table = compare.build_table("ti-fraction-test", compare.load_runs("ti-fraction-test", uri),
                                by="data.fraction")
    assert table.targets == ["street", "plaza"]
    assert table.label_keys == ["data.fraction"]  # the only param that tells configs apart
    assert [r.label["data.fraction"] for r in table.rows] == ["0.0125", "0.25", "1.0"]
    # every cell is the mean/std over seeds of the runs' final metric values read back from MLflow
    for row in table.rows:
        assert len(row.runs) == 3
        for column in ("street", "plaza", "mean"):
            finals = [client.get_run(r).data.metrics[f"auc/{column}"] for r in row.runs]
            assert row.mean(column) == pytest.approx(statistics.mean(finals), abs=1e-12)
            assert row.std(column) == pytest.approx(statistics.stdev(finals), abs=1e-12)
    low, mid, full = table.rows
    assert low.mean("street") == pytest.approx(0.60)
    assert table.best("street") is full and table.best("plaza") is full
    # 0.25 trails 1.0 by 0.01 on street with a seed spread of ~0.046: not significant
    assert table.not_significant(mid, "street")
    # 0.0125 trails by 0.22: significant
    assert not table.not_significant(low, "street")
    assert not table.not_significant(full, "street")


def test_markdown_bold_best_and_marks(store):
    uri, _, _ = store
    table = compare.build_table("ti-fraction-test", compare.load_runs("ti-fraction-test", uri),
                                by="data.fraction")
    md = compare.to_markdown(table)
    lines = md.splitlines()
    assert lines[0] == "| data.fraction | street | plaza | mean | runs |"
    full_line = next(line for line in lines if line.startswith("| 1.0 |"))
    street_std = 100 * statistics.stdev([0.82, 0.81, 0.83])
    assert f"**82.00 ± {street_std:.2f}**" in full_line
    mid_line = next(line for line in lines if line.startswith("| 0.25 |"))
    assert f"79.00 ± {100 * statistics.stdev([0.80, 0.74, 0.83]):.2f} {compare.NOT_SIGNIFICANT}" in mid_line
    low_line = next(line for line in lines if line.startswith("| 0.0125 |"))
    assert compare.NOT_SIGNIFICANT not in low_line and "**" not in low_line
    assert "| 3 |" in low_line


def test_cli_writes_csv_markdown_png_that_match(store, tmp_path, capsys):
    uri, client, _ = store
    out = tmp_path / "out"
    rc = compare.main(["--experiment", "ti-fraction-test", "--by", "data.fraction", "--out", str(out),
                       "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| data.fraction | street | plaza | mean | runs |" in printed
    rows = list(csv.DictReader((out / "ti-fraction-test.csv").open()))
    assert [r["data.fraction"] for r in rows] == ["0.0125", "0.25", "1.0"]
    for row, fraction in zip(rows, AUCS):
        streets = [s for s, _ in AUCS[fraction]]
        plazas = [p for _, p in AUCS[fraction]]
        assert float(row["street_mean"]) == pytest.approx(statistics.mean(streets), abs=1e-12)
        assert float(row["plaza_std"]) == pytest.approx(statistics.stdev(plazas), abs=1e-12)
        assert float(row["mean_mean"]) == pytest.approx(statistics.mean(
            [(s + p) / 2 for s, p in AUCS[fraction]]), abs=1e-12)
        assert row["runs"] == "3"
    assert rows[1]["street_not_significant"] == "1" and rows[0]["street_not_significant"] == "0"
    assert (out / "ti-fraction-test.md").read_text() in printed
    png = (out / "ti-fraction-test.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(out.glob(".*")), "partial files left behind"


def test_single_seed_has_no_spread_and_no_marks(store, tmp_path):
    uri, _, _ = store
    table = compare.build_table("one-seed", compare.load_runs("one-seed", uri))
    assert not table.seeded
    md = compare.to_markdown(table)
    assert "±" not in md and compare.NOT_SIGNIFICANT not in md
    assert "**71.00**" in md and "**65.00**" in md
    compare.plot(table, tmp_path / "bars.png")  # no --by: one bar per row
    assert (tmp_path / "bars.png").stat().st_size > 3000


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "MLflow experiment 'nope' not found"),
    (["--experiment", "ti-fraction-test", "--by", "loss.alpha_Q"], "--by loss.alpha_Q: no such param"),
])
def test_cli_errors_are_one_line(store, tmp_path, capsys, args, message):
    uri, _, _ = store
    rc = compare.main([*args, "--tracking-uri", uri, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "x").exists()


def test_missing_database_is_one_line(tmp_path, capsys):
    rc = compare.main(["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no such MLflow database" in err[0]
    assert not (tmp_path / "none.db").exists()


def test_paths_lose_their_shared_folders():
    assert compare._shorten(["s3://b/x/sht/train", "s3://b/x/hmdb/train"]) == ["sht/train", "hmdb/train"]
    assert compare._shorten(["0.5", "1.0"]) == ["0.5", "1.0"]
    assert math.isnan(compare.Row("k", {}).mean("street"))


def test_gain_column_and_ranking_by_gain(store, tmp_path, capsys):
    uri, client, _ = store
    exp_id = client.create_experiment("gain-test")
    # config -> seeds of (street AUC, street gain, plaza AUC, plaza gain): "b" has the higher AUC,
    # "a" the higher gain over the trivial baselines
    runs = {"a": [(0.80, 0.03, 0.70, 0.01), (0.82, 0.05, 0.72, 0.03)],
            "b": [(0.90, -0.02, 0.85, -0.04), (0.92, -0.01, 0.86, -0.03)]}
    for name, seeds in runs.items():
        for seed, (street, g_street, plaza, g_plaza) in enumerate(seeds):
            run_id = client.create_run(exp_id).info.run_id
            client.log_param(run_id, "loss.alpha_N", name)
            client.log_param(run_id, "train.seed", seed)
            for key, value in {"auc/street": street, "auc/plaza": plaza, "auc/mean": (street + plaza) / 2,
                               "auc_gain/street": g_street, "auc_gain/plaza": g_plaza,
                               "auc_gain/mean": (g_street + g_plaza) / 2,
                               "auc_baseline/copy_last/street": street - g_street}.items():
                client.log_metric(run_id, key, value, step=8)
    table = compare.build_table("gain-test", compare.load_runs("gain-test", uri))
    assert table.columns == ["street", "plaza", "mean", "gain"]
    a = next(r for r in table.rows if r.params["loss.alpha_N"] == "a")
    assert a.mean("gain") == pytest.approx(statistics.mean([0.02, 0.04]))
    assert a.mean("gain/street") == pytest.approx(0.04)
    assert compare.rank(table, "auc/mean") == "mean" and table.rows[0].params["loss.alpha_N"] == "b"
    assert compare.rank(table, "auc_gain/mean") == "gain" and table.rows[0] is a
    assert compare.rank(table, "auc_gain/plaza") == "gain/plaza" and table.rows[0] is a

    rc = compare.main(["--experiment", "gain-test", "--metric", "auc_gain/mean", "--out",
                       str(tmp_path / "out"), "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert rc == 0
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert lines[0] == "| loss.alpha_N | street | plaza | mean | gain | runs |"
    assert lines[1].startswith("| a |") and "**+3.00 ± 1.41**" in lines[1] and lines[2].startswith("| b |")
    assert "gain: G's AUC minus the best trivial baseline's" in printed
    rows = list(csv.DictReader((tmp_path / "out" / "gain-test.csv").open()))
    assert float(rows[0]["gain_mean"]) == pytest.approx(0.03)

    rc = compare.main(["--experiment", "gain-test", "--metric", "auc_gain/ped2", "--tracking-uri", uri,
                       "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--metric auc_gain/ped2: not logged" in err[0]
    assert "auc_gain/street" in err[0] and not (tmp_path / "x").exists()


def test_ranking_by_another_protocol_shows_its_column_and_eer_ranks_lowest_first(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("protocols-test")
    # "a" has the better papers' AUC, "b" the better macro AUC and the lower EER
    for name, (auc, macro, eer) in {"a": (0.9, 0.6, 0.3), "b": (0.8, 0.7, 0.2)}.items():
        run_id = client.create_run(exp_id).info.run_id
        client.log_param(run_id, "model.output", name)
        for key, value in {"auc/ped2": auc, "auc/mean": auc, "auc_macro/ped2": macro,
                           "auc_macro/mean": macro, "eer/mean": eer,
                           "auc_macro_baseline/copy_last/ped2": 0.5}.items():
            client.log_metric(run_id, key, value, step=1)
    table = compare.build_table("protocols-test", compare.load_runs("protocols-test", uri))
    assert compare.rank(table, "auc/mean") == "mean" and table.rows[0].params["model.output"] == "a"
    assert compare.rank(table, "auc_macro/ped2") == "auc_macro/ped2"
    assert table.rows[0].params["model.output"] == "b"
    assert compare.rank(table, "eer/mean") == "eer/mean" and table.rows[0].params["model.output"] == "b"
    assert table.best("eer/mean") is table.rows[0]
    assert table.columns[-2:] == ["auc_macro/ped2", "eer/mean"]

    capsys.readouterr()  # the new store's own log lines
    rc = compare.main(["--experiment", "protocols-test", "--metric", "eer/ped2", "--tracking-uri",
                       uri, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--metric eer/ped2: not logged" in err[0]
    assert "eer/mean" in err[0] and "auc_macro/ped2" in err[0]


def test_per_target_tables_show_g_each_baseline_and_the_gain(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("ablation")
    for alpha_n, aucs in ((0.5, (0.97, 0.95)), (0.0, (0.93, 0.91))):
        for seed, auc in enumerate(aucs):
            run_id = client.create_run(exp_id).info.run_id
            client.log_param(run_id, "loss.alpha_N", alpha_n)
            client.log_param(run_id, "train.seed", seed)
            if alpha_n:  # a param only some runs have is left out of the others' labels
                client.log_param(run_id, "loss.normalcy_pair", "real")
            metrics = {"auc/real": auc, "auc/mean": auc, "auc_baseline/copy_last/real": 0.96,
                       "auc_baseline/linear/real": 0.94, "auc_gain/real": auc - 0.96,
                       "auc_gain/mean": auc - 0.96}
            for key, value in metrics.items():
                client.log_metric(run_id, key, value, step=300)
    rc = compare.main(["--experiment", "ablation", "--by", "loss.alpha_N", "--per-target",
                       "--out", str(tmp_path / "out"), "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| config | G | copy_last | linear | gain | runs |" in printed
    assert "| loss.alpha_N=0.5, loss.normalcy_pair=real | 96.00 ± 1.41 | 96.00 | 94.00 | +0.00 ± 1.41 | 2 |" in printed
    assert "| loss.alpha_N=0.0 | 92.00 ± 1.41 | 96.00 | 94.00 | -4.00 ± 1.41 | 2 |" in printed
