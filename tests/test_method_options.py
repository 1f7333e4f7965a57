"""N's class pairs, the static-pixel term, the label-free diagnostics and the lab runner."""

import json

import pytest
import torch

from zxvad import config, losses
from zxvad.bench import lab
from zxvad.bench.diagnostics import diagnostics
from zxvad.step import build_state, normalcy_pair

from helpers import tiny_config
from layouts import write_ped_frames, write_videofolder

TINY = ["model.disc_width=4", "model.backbone=mnasnet1_0", "train.batch_size=2"]


def clips_and_donors(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 5, 3, size, size, generator=g) * 2 - 1,
            torch.rand(batch, 3, size, size, generator=g) * 2 - 1)


@pytest.mark.parametrize("pair", ["literal", "real", "prediction"])
def test_normalcy_pairs_differ_only_by_the_paste_unless_literal(pair):
    cfg = tiny_config(*TINY, f"loss.normalcy_pair={pair}")
    state = build_state(cfg, "cpu")
    clips, donors = clips_and_donors()
    fake = torch.zeros(2, 3, 32, 32)  # a "generated" frame no real frame equals
    normal, syn = normalcy_pair(cfg, clips, donors, fake, state.R, torch.Generator().manual_seed(1))
    outside = syn.mask.expand_as(normal) == 0
    assert outside.any() and (syn.mask > 0).any()
    if pair == "literal":  # the paper: v^ against a paste on a real input frame
        assert torch.equal(normal, fake)
        assert not torch.equal(syn.frames[outside], fake[outside])
    elif pair == "real":  # v_{T+1} against a paste on a real input frame
        assert torch.equal(normal, clips[:, 4])
        base = clips[torch.arange(2), syn.frame_index]
        assert torch.equal(syn.frames[outside], base[outside])
    else:  # v^ against a paste on v^
        assert torch.equal(normal, fake)
        assert torch.equal(syn.frames[outside], fake[outside])


def test_a_bad_normalcy_pair_is_refused_with_its_key():
    with pytest.raises(config.ConfigError, match="loss.normalcy_pair"):
        config.load("demo", ["loss.normalcy_pair=both"])


def test_static_change_loss_counts_only_pixels_that_do_not_move():
    last = torch.zeros(1, 3, 8, 8)
    target = last.clone()
    target[..., :4] = 0.5  # the left half moves
    pred = last.clone()
    assert losses.static_change_loss(pred, last, target, 0.02) == 0
    pred[..., :4] = 1.0  # a change where things move: not penalised
    assert losses.static_change_loss(pred, last, target, 0.02) == 0
    pred[..., 4:] = 0.2  # a change on the static right half
    assert losses.static_change_loss(pred, last, target, 0.02).item() == pytest.approx(0.04)


def test_static_weight_adds_the_term_to_l_g():
    pred, last = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)
    target = last.clone()  # nothing moves: G's change of -0.1 everywhere is all static error
    weights = torch.full((1, 4, 2, 2), 0.25)
    d = torch.ones(1, 1, 2, 2)
    off = losses.generator_objective(pred, target, weights, d, None, config.LossConfig())
    on = losses.generator_objective(pred, target, weights, d, None,
                                    config.LossConfig(static_weight=2.0), last=last)
    assert off["l_static"] == 0 and on["l_static"].item() == pytest.approx(0.01)
    assert (on["l_g"] - off["l_g"]).item() == pytest.approx(0.02)


class MeanN(torch.nn.Module):
    """A stand-in N whose logit is the mean intensity: it rewards brighter frames."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=True)


def test_diagnostics_of_an_untrained_residual_g_are_those_of_copy_last():
    cfg = tiny_config(*TINY, "model.output=residual")
    state = build_state(cfg, "cpu")
    clips, donors = clips_and_donors()
    found = diagnostics(state, clips, donors, cfg)
    assert found["g_static_rms"] == 0 and found["g_beats_copy_last"] == 0
    assert found["n_k_slope"] == pytest.approx(0, abs=1e-6)  # v^ = v_T: every k gives one frame


def test_k_slope_is_how_much_n_rewards_exaggerating_gs_change():
    cfg = tiny_config(*TINY, "model.output=residual")
    state = build_state(cfg, "cpu")
    with torch.no_grad():
        state.G.outc.bias.fill_(0.1)  # G brightens every pixel by 0.1
    state.N = MeanN()
    clips, donors = clips_and_donors()
    found = diagnostics(state, clips, donors, cfg)
    last = clips[:, 3]
    change = ((last + 0.1).clamp(-1, 1) - last).mean().item()
    assert found["n_k_slope"] == pytest.approx(change, rel=1e-4) and change > 0.05
    assert found["n_gap_generated_real"] == pytest.approx(
        ((last + 0.1).clamp(-1, 1) - clips[:, 4]).mean().item(), abs=1e-5)


def _run(steps_and_gains):
    return {"evaluations": [{"step": s, "gain": {"macro": g}} for s, g in steps_and_gains]}


def test_curve_points_keep_the_final_evaluation_of_runs_stopped_at_different_steps():
    # --minutes stopped one seed at step 1884 and the other at 1950: the shared steps, then
    # each run's final evaluation at the mean of their final steps
    runs = [_run([(650, 0.01), (1300, 0.02), (1950, 0.03)]), _run([(650, 0.03), (1300, 0.00), (1884, -0.01)])]
    steps, gains = lab.curve_points(runs, "macro")
    assert steps == [650, 1300, 1917]
    assert gains.ravel().tolist() == pytest.approx([1.0, 2.0, 3.0, 3.0, 0.0, -1.0])
    # runs that all ended on a shared step gain no extra point
    steps, gains = lab.curve_points([runs[0], _run([(650, 0.0), (1300, 0.0), (1950, 0.05)])], "macro")
    assert steps == [650, 1300, 1950] and gains[1, 2] == pytest.approx(5.0)


@pytest.mark.slow
def test_lab_scores_ped2_layout_under_every_protocol_and_starts_at_copy_last(tmp_path, capsys):
    write_ped_frames(tmp_path)
    write_videofolder(tmp_path / "ti")
    parser = __import__("argparse").ArgumentParser()
    lab.add_arguments(parser)
    common = ["--set", "model.image_size=32", "--set", "model.width=4", "--set", "model.memory_dim=32",
              "--set", "model.memory_items=8", "--set", "model.disc_width=4", "--set",
              "model.backbone=mnasnet1_0", "--set", "train.batch_size=2", "--set", "model.output=residual",
              "--ped2", str(tmp_path / "ped2"), "--clips", str(tmp_path / "ti"),
              "--cache", str(tmp_path / "cache"), "--steps", "2", "--eval-every", "1", "--threads", "1", "--initial-eval"]
    figures = lab.run(parser.parse_args([*common, "--source", "ti", "--out", str(tmp_path / "ti.json")]))
    result = json.loads((tmp_path / "ti.json").read_text())
    first = result["evaluations"][0]
    assert first["step"] == 0 and [e["step"] for e in result["evaluations"]] == [0, 1, 2]
    for protocol in ("micro_minmax", "micro_raw", "macro"):
        # an untrained residual G is copy_last, frame for frame, under every protocol
        assert first["G"][protocol] == pytest.approx(first["copy_last"][protocol])
        assert f"gain/{protocol}" in figures
    assert (tmp_path / "ti.png").stat().st_size > 0
    assert (tmp_path / "cache" / "ped2-test-32.npz").is_file()
    assert result["windows"]["kept"] <= result["windows"]["windows"]
    # the second run reads the packed frames back from the cache
    lab.run(parser.parse_args([*common, "--source", "ped2", "--out", str(tmp_path / "in.json"), "--save"]))
    assert (tmp_path / "in.pt").stat().st_size > 0  # G's weights, to rescore without retraining
    gains = lab.run(parser.parse_args([*common, "--source", "ped2", "--rescore", str(tmp_path / "in.pt"),
                                       "--patch", "8", "--out", str(tmp_path / "rescored.json")]))
    rescored, trained = (json.loads((tmp_path / n).read_text()) for n in ("rescored.json", "in.json"))
    ids = [v for v in rescored["per_video"]["G"]]
    assert ids and set(ids) == set(rescored["per_video"]["linear"])
    defined = [a for a in rescored["per_video"]["G"].values() if a == a]  # NaN: a video of one class
    assert rescored["G"]["macro"] == pytest.approx(sum(defined) / len(defined))
    for name in ("G", "copy_last"):  # the papers' AUC taken apart by kind of pair adds back up
        assert rescored["pairs"][name]["all"]["auc"] == pytest.approx(rescored[name]["micro_minmax"])
        assert all(0 <= m <= 1 for m in rescored["median_minmax_score"][name].values())
    for protocol in ("micro_minmax", "micro_raw", "macro"):  # the same weights score the same
        assert rescored["G"][protocol] == pytest.approx(trained["final"]["G"][protocol])
        best = max(rescored[b + s][protocol] for b in ("copy_last", "mean_T", "linear") for s in ("", "_patch"))
        assert rescored["gain_patch"][protocol] == pytest.approx(rescored["G_patch"][protocol] - best)
        assert gains[f"gain_patch/{protocol}"] == pytest.approx(100 * rescored["gain_patch"][protocol], abs=0.01)
    assert "packing ped2 test" not in capsys.readouterr().out.split("lab: ped2")[-1]
    summary = lab.summarise([str(tmp_path / "ti.json"), str(tmp_path / "in.json")],
                            plot=str(tmp_path / "curves.png"))["groups"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(summary) == 2  # one row per source
    row = next(v for k, v in summary.items() if k.startswith("ti "))["micro_minmax"]
    assert row["seeds"] == 1 and row["G"][0] == pytest.approx(100 * result["final"]["G"]["micro_minmax"], abs=0.01)
    early = lab.summarise([str(tmp_path / "ti.json")], step=1)["groups"]  # read at step 1 of 2
    assert next(iter(early.values()))["micro_minmax"]["G"][0] == pytest.approx(
        100 * result["evaluations"][1]["G"]["micro_minmax"], abs=0.01)
    with pytest.raises(ValueError, match="no evaluation at step 7"):
        lab.summarise([str(tmp_path / "ti.json")], step=7)

    # logged to MLflow, tune.compare reads the lab runs as it reads training runs
    from tune import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lab.log_mlflow([result, json.loads((tmp_path / "in.json").read_text())], "lab-test", uri)
    table = compare.build_table("lab-test", compare.load_runs("lab-test", uri))
    assert table.targets == ["ped2"] and len(table.rows) == 2
    ti_row = next(r for r in table.rows if r.params["lab.source"] == "ti")
    assert ti_row.values["ped2"] == [pytest.approx(result["final"]["G"]["micro_minmax"])]
    assert ti_row.values["baseline/copy_last/ped2"] == [pytest.approx(result["final"]["copy_last"]["micro_minmax"])]
    assert ti_row.values["gain/ped2"] == [pytest.approx(result["final"]["gain"]["micro_minmax"])]
    assert "**ped2**" in compare.per_target_markdown(table)
