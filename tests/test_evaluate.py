"""zxvad.evaluate without DALI: G and the trivial baselines scored in one pass over ordered clips,
checked against PSNRs and AUCs computed by hand; the report, the table and the MLflow metrics."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zxvad import evaluate, metrics
from zxvad.data.pipelines import EvalClip

T = 2
# one value per frame (every pixel, every channel), dyadic so float32 arithmetic is exact
VIDEOS = {
    "a": ([0.0, 0.125, 0.25, 0.375, 0.875, 0.5, 0.625, 0.25], [0, 0, 0, 0, 1, 0, 0, 1]),
    "b": ([0.5, 0.5, 0.5, 0.625, -0.25, 0.75, 0.75, 0.75], [0, 0, 0, 0, 1, 1, 0, 0]),
}


class HalfLast(torch.nn.Module):
    """A stand-in G that predicts half the last input frame."""

    def forward(self, x):
        return SimpleNamespace(prediction=x[:, -1] * 0.5)


def _clips():
    """Each video cut into two clips that overlap by T frames, as the test shards are."""
    for vid, (values, labels) in VIDEOS.items():
        frames = torch.tensor(values).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
        y = torch.tensor(labels, dtype=torch.uint8)
        cut = 5
        for first, stop in ((0, cut), (cut - T, len(values))):
            yield EvalClip(vid, first, frames[first:stop], y[first:stop], len(values), stop == len(values))


def _psnr(pred: float, target: float) -> float:
    mse = max(((pred - target) / 2) ** 2, 1e-10)
    return 10 * math.log10(1 / mse)


PREDICTORS = {  # v: the video's values, t: the predicted frame
    "G": lambda v, t: 0.5 * v[t - 1],
    "copy_last": lambda v, t: v[t - 1],
    "mean_T": lambda v, t: sum(v[t - T:t]) / T,
    "linear": lambda v, t: min(1.0, max(-1.0, 2 * v[t - 1] - v[t - 2])),
}


def _hand_auc(predictor) -> tuple[float, dict[str, list[float]]]:
    """Per-video min-max normalised PSNR scores pooled; AUC by counting pairs (ties count half)."""
    pos, neg, psnrs = [], [], {}
    for vid, (v, labels) in VIDEOS.items():
        p = [_psnr(predictor(v, t), v[t]) for t in range(T, len(v))]
        psnrs[vid] = p
        lo, hi = min(p), max(p)
        for t, value in zip(range(T, len(v)), p):
            score = 1 - (value - lo) / (hi - lo)
            (pos if labels[t] else neg).append(score)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg)), psnrs


@pytest.fixture
def result(monkeypatch):
    import zxvad.data

    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    return evaluate.evaluate_target(HalfLast(), "tiny", ["unused.tar"], T=T, size=2,
                                    device=torch.device("cpu"), batch_size=3, top_frames=2,
                                    progress=False)


def test_baselines_match_hand_computation(result):
    hand = {name: _hand_auc(p) for name, p in PREDICTORS.items()}
    assert result.auc == pytest.approx(hand["G"][0], abs=1e-6)
    assert set(result.baseline_aucs) == {"copy_last", "mean_T", "linear"}
    for name, value in result.baseline_aucs.items():
        assert value == pytest.approx(hand[name][0], abs=1e-6), name
    # hand values: G .75, copy_last .953, mean_T .938, linear .813; all differ, so a mix-up of predictors could not pass unnoticed
    assert len({round(a, 6) for a, _ in hand.values()}) == 4
    best = max(hand[b][0] for b in ("copy_last", "mean_T", "linear"))
    assert result.gain == pytest.approx(hand["G"][0] - best, abs=1e-6)
    for video in result.videos:
        vid = video["video_id"]
        assert video["frame_index"] == list(range(T, len(VIDEOS[vid][0])))
        assert video["psnr"] == pytest.approx(hand["G"][1][vid], abs=1e-4)
        for name in ("copy_last", "mean_T", "linear"):
            assert video["baseline_psnr"][name] == pytest.approx(hand[name][1][vid], abs=1e-4)


def test_report_table_and_metric_names(result, tmp_path):
    results = {"tiny": result}
    files = evaluate.write_report(results, tmp_path, T=T, plots=True)
    report = json.loads((tmp_path / "results.json").read_text())
    target = report["targets"]["tiny"]
    assert target["baseline_auc"] == pytest.approx(result.baseline_aucs)
    assert target["gain"] == pytest.approx(result.gain)
    assert target["videos"][0]["baseline_psnr"]["copy_last"] == result.videos[0]["baseline_psnr"]["copy_last"]
    assert (tmp_path / "tiny-curves.png") in files

    assert {tmp_path / "tiny-roc.png", tmp_path / "tiny-histogram.png"} <= set(files)

    flat = report["metrics"]
    papers = {k: v for k, v in flat.items() if k.split("/")[0] in ("auc", "auc_gain", "auc_baseline")}
    assert papers == pytest.approx({
        "auc/tiny": result.auc, "auc/mean": result.auc, "auc_gain/tiny": result.gain,
        "auc_gain/mean": result.gain,
        **{f"auc_baseline/{b}/tiny": v for b, v in result.baseline_aucs.items()}})
    assert target["protocols"]["G"]["auc_raw"] == flat["auc_raw/tiny"]
    assert metrics.per_target(flat) == {"tiny": pytest.approx(
        {"G": result.auc, "gain": result.gain, **result.baseline_aucs})}

    lines = evaluate.auc_table(results).splitlines()
    assert lines[0].split() == ["target", "G", "%", "copy_last", "mean_T", "linear", "gain",
                                "frames", "videos"]
    row = lines[1].split()
    assert row[0] == "tiny" and float(row[1]) == pytest.approx(100 * result.auc, abs=0.005)
    assert float(row[2]) == pytest.approx(100 * result.baseline_aucs["copy_last"], abs=0.005)
    assert float(row[5]) == pytest.approx(100 * result.gain, abs=0.005)
    assert row[6:] == ["12", "2"]


def _pairs(pos: list[float], neg: list[float]) -> float:
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_every_protocol_for_g_and_each_baseline_matches_hand_counting(result):
    flat = metrics.flat({"tiny": result})
    for name, predictor in PREDICTORS.items():
        _, psnrs = _hand_auc(predictor)
        pooled_pos, pooled_neg, per_video = [], [], []
        for vid, (_, labels) in VIDEOS.items():
            pos = [-p for p, y in zip(psnrs[vid], labels[T:]) if y]
            neg = [-p for p, y in zip(psnrs[vid], labels[T:]) if not y]
            pooled_pos += pos
            pooled_neg += neg
            per_video.append(_pairs(pos, neg))
        raw, macro = _pairs(pooled_pos, pooled_neg), sum(per_video) / len(per_video)
        prefix = "" if name == "G" else f"_baseline/{name}"
        assert flat[f"auc_raw{prefix}/tiny"] == pytest.approx(raw, abs=1e-6), name
        assert flat[f"auc_macro{prefix}/tiny"] == pytest.approx(macro, abs=1e-6), name
    best_raw = max(flat[f"auc_raw_baseline/{b}/tiny"] for b in ("copy_last", "mean_T", "linear"))
    assert flat["auc_raw_gain/tiny"] == pytest.approx(flat["auc_raw/tiny"] - best_raw)
    best_eer = min(flat[f"eer_baseline/{b}/tiny"] for b in ("copy_last", "mean_T", "linear"))
    assert flat["eer_gain/tiny"] == pytest.approx(best_eer - flat["eer/tiny"])  # positive = G better
    assert "auc_smooth/tiny" not in flat  # smoothing is off unless asked
    table = metrics.protocol_table(flat)
    assert "AUC, raw -PSNR" in table and "EER (min-max, lower better)" in table


def test_smoothing_adds_named_twins_of_every_protocol(monkeypatch):
    import zxvad.data

    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    r = evaluate.evaluate_target(HalfLast(), "tiny", ["unused.tar"], T=T, size=2,
                                 device=torch.device("cpu"), batch_size=3, progress=False,
                                 smooth_sigma=1.0)
    flat = metrics.flat({"tiny": r})
    for name in metrics.protocol_names():
        assert f"{name}_smooth/tiny" in flat and f"{name}_smooth_gain/mean" in flat
    assert flat["auc/tiny"] == pytest.approx(r.auc)  # the papers' figure is never smoothed
    assert "smoothed" in metrics.protocol_table(flat)
    assert metrics.lower_is_better("eer_smooth/tiny") and not metrics.lower_is_better("eer_gain/tiny")


def test_gain_and_mean_over_targets():
    a = SimpleNamespace(auc=0.9, baseline_aucs={"copy_last": 0.95, "mean_T": 0.7, "linear": 0.8})
    b = SimpleNamespace(auc=0.8, baseline_aucs={"copy_last": 0.6, "mean_T": 0.5, "linear": 0.7})
    flat = metrics.flat({"x": a, "y": b})
    assert flat["auc_gain/x"] == pytest.approx(-0.05) and flat["auc_gain/y"] == pytest.approx(0.1)
    assert flat["auc_gain/mean"] == pytest.approx(0.025) and flat["auc/mean"] == pytest.approx(0.85)
    mean_row = metrics.table(flat).splitlines()[3].split()
    assert mean_row == ["mean", "85.00", "77.50", "60.00", "75.00", "+2.50"]
    assert math.isnan(metrics.gain(0.9, {}))


def test_mlflow_holds_baselines_and_gains(result, tmp_path):
    import mlflow

    from zxvad.tracking.logger import log_evaluation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("t"))
    log_evaluation(run.info.run_id, {"tiny": result}, {"params": 3.0}, [], step=5, uri=uri)
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["auc_gain/tiny"] == pytest.approx(result.gain)
    assert logged["auc_gain/mean"] == pytest.approx(result.gain)
    for name, value in result.baseline_aucs.items():
        assert logged[f"auc_baseline/{name}/tiny"] == pytest.approx(value)
    assert logged["efficiency/params"] == 3.0
    assert logged["auc_macro/tiny"] == pytest.approx(result.protocols["G"]["auc_macro"])
    assert logged["aupr_baseline/copy_last/tiny"] == pytest.approx(result.protocols["copy_last"]["aupr"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "auc_gain/tiny")] == [5]


def test_worst_tile_score_in_the_same_pass_beside_the_papers(monkeypatch, tmp_path):
    import zxvad.data

    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    r = evaluate.evaluate_target(HalfLast(), "tiny", ["unused.tar"], T=T, size=2,
                                 device=torch.device("cpu"), batch_size=3, progress=False,
                                 patch_size=1)
    hand = {name: _hand_auc(p)[0] for name, p in PREDICTORS.items()}
    # the test frames are uniform, so every 1x1 tile is the whole frame: same AUCs as the paper's
    assert r.patch_auc == pytest.approx(hand["G"], abs=1e-6)
    assert r.patch_baseline_aucs == pytest.approx({b: hand[b] for b in ("copy_last", "mean_T", "linear")})
    flat = metrics.flat({"tiny": r})
    best = max(hand[b] for b in ("copy_last", "mean_T", "linear"))
    assert flat["auc_patch/tiny"] == pytest.approx(hand["G"], abs=1e-6)
    assert flat["auc_patch_gain/tiny"] == pytest.approx(hand["G"] - best, abs=1e-6)
    assert flat["auc_patch_gain/mean"] == flat["auc_patch_gain/tiny"]
    assert flat["auc_patch_baseline/linear/tiny"] == pytest.approx(hand["linear"], abs=1e-6)
    header = evaluate.auc_table({"tiny": r}).splitlines()[0].split()
    assert header[:12] == ["target", "G", "%", "copy_last", "mean_T", "linear", "gain", "G",
                           "patch", "%", "gain", "patch"]
    evaluate.write_report({"tiny": r}, tmp_path, T=T, plots=False)
    report = json.loads((tmp_path / "results.json").read_text())["targets"]["tiny"]
    assert report["patch_auc"] == pytest.approx(r.patch_auc)
    assert report["videos"][0]["patch_psnr"]["G"] == pytest.approx(report["videos"][0]["psnr"])
    off = evaluate.evaluate_target(HalfLast(), "tiny", ["unused.tar"], T=T, size=2,
                                   device=torch.device("cpu"), batch_size=3, progress=False)
    assert off.patch_auc is None and "auc_patch/tiny" not in metrics.flat({"tiny": off})


class BatchCounter(torch.nn.Module):
    """Wraps G and records the batch size of every call."""

    def __init__(self, G):
        super().__init__()
        self.G, self.sizes = G, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.G(x)


def _cut(vid: str, frames: torch.Tensor, labels: torch.Tensor, clip_len: int, overlap: int):
    """One video cut into clips of ``clip_len`` that overlap by ``overlap`` frames (the last may be short)."""
    first, clips = 0, []
    while True:
        stop = min(first + clip_len, len(frames))
        clips.append(EvalClip(vid, first, frames[first:stop], labels[first:stop], len(frames),
                              stop == len(frames)))
        if stop == len(frames):
            return clips
        first = stop - overlap


def _labelled_clips(T: int, size: int):
    """Three videos (13, 10, 8 frames) in clips of 7: 3, 3, 3 | 3, 3 | 3, 1 windows per clip."""
    gen = torch.Generator().manual_seed(1)
    clips = []
    for vid, length in (("v0", 13), ("v1", 10), ("v2", 8)):
        frames = torch.rand(length, 3, size, size, generator=gen) * 2 - 1
        labels = torch.zeros(length, dtype=torch.uint8)
        labels[length // 2:length // 2 + 2] = 1
        clips += _cut(vid, frames, labels, clip_len=7, overlap=T)
    return clips


def _per_clip_reference(G, clips, T: int):
    """Scores as evaluation computed them before cross-clip batching: one G call per clip."""
    from zxvad import scoring
    from zxvad.data import prediction_windows

    psnr = {p: {} for p in ("G", *scoring.BASELINES)}
    labels, predictions = {}, {}
    with torch.no_grad():
        for clip in clips:
            labels.setdefault(clip.video_id, {}).update(
                zip(range(clip.first_frame, clip.first_frame + len(clip.labels)), clip.labels.tolist()))
            windows, index, _ = prediction_windows(clip, T)
            if not len(windows):
                continue
            inputs, target = windows[:, :T], windows[:, T]
            outputs = {"G": G(inputs).prediction, **scoring.baseline_predictions(inputs)}
            for p, out in outputs.items():
                for i, value in zip(index.tolist(), scoring.psnr(out, target).tolist()):
                    psnr[p].setdefault(clip.video_id, {})[i] = value
            predictions.update({(clip.video_id, i): outputs["G"][j] for j, i in enumerate(index.tolist())})
    return psnr, {vid: [d[i] for i in range(len(d))] for vid, d in labels.items()}, predictions


def test_batches_cross_clips_and_match_per_clip_reference(monkeypatch, one_thread):
    import zxvad.data
    from tests.helpers import tiny_config, tiny_generator
    from zxvad import scoring

    cfg = tiny_config()
    T, size = cfg.model.T, cfg.model.image_size
    G = tiny_generator(cfg).eval()
    clips = _labelled_clips(T, size)
    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: iter(clips))
    counted = BatchCounter(G)
    result = evaluate.evaluate_target(counted, "tiny", ["unused.tar"], T=T, size=size,
                                      device=torch.device("cpu"), batch_size=4, top_frames=3,
                                      progress=False)
    assert counted.sizes == [4, 4, 4, 4, 3]  # 19 windows; per clip it would be 3, 3, 3, 3, 3, 3, 1

    psnr, labels, predictions = _per_clip_reference(G, clips, T)
    assert [v["video_id"] for v in result.videos] == ["v0", "v1", "v2"] and result.num_frames == 19
    for video in result.videos:
        vid = video["video_id"]
        assert video["frame_index"] == sorted(psnr["G"][vid]) == list(range(T, len(labels[vid])))
        assert video["psnr"] == pytest.approx([psnr["G"][vid][i] for i in video["frame_index"]], abs=1e-4)
        assert video["labels_all"] == labels[vid]
        for b in scoring.BASELINES:
            assert video["baseline_psnr"][b] == [psnr[b][vid][i] for i in video["frame_index"]]

    def reference_auc(p):
        videos = [scoring.VideoResult(vid, np.array([v[i] for i in sorted(v)]),
                                      np.array(labels[vid], dtype=np.uint8)) for vid, v in psnr[p].items()]
        return scoring.frame_auc(videos, T)

    assert result.auc == pytest.approx(reference_auc("G"), abs=1e-9)
    assert result.baseline_aucs == pytest.approx({b: reference_auc(b) for b in scoring.BASELINES}, abs=1e-9)

    # difference maps: the 3 highest-scoring frames of the target, with G's prediction for them
    scored = []
    for vid, values in psnr["G"].items():
        low, high = min(values.values()), max(values.values())
        scored += [(-(1 - (v - low) / (high - low)), v, vid, i) for i, v in values.items()]
    expected = [(vid, i) for _, _, vid, i in sorted(scored)[:3]]
    assert [(t["video_id"], t["frame_index"]) for t in result.top] == expected
    for t in result.top:
        reference = ((predictions[(t["video_id"], t["frame_index"])].clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
        np.testing.assert_allclose(t["prediction"], reference.numpy(), atol=1e-5)


def test_batch_size_below_one_is_one_clear_error(monkeypatch):
    import zxvad.data

    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    with pytest.raises(ValueError, match=r"batch size -1 \(--batch-size, eval.batch_size\): expected at least 1"):
        evaluate.evaluate_target(HalfLast(), "tiny", ["unused.tar"], T=T, size=2,
                                 device=torch.device("cpu"), batch_size=-1, progress=False)


def _patch_config():
    from zxvad import config

    return config.load("demo", ["model.T=2", "eval.patch_size=1", "eval.batch_size=3", "eval.top_frames=2"])


def test_evaluate_command_honours_every_eval_key_of_the_checkpoint(monkeypatch, tmp_path, capsys):
    """``python -m zxvad.evaluate`` scores by the checkpoint's ``eval.*`` as training does: it used
    to drop ``eval.patch_size`` (the worst-tile score) on its own path."""
    import zxvad.checkpoint
    import zxvad.data

    cfg = _patch_config()
    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    monkeypatch.setattr(zxvad.data, "verify_shard_set", lambda spec: ["unused.tar"])
    monkeypatch.setattr(zxvad.checkpoint, "load_generator", lambda path, device: (HalfLast(), cfg))
    monkeypatch.setattr(evaluate, "storage_lines", lambda targets: ([], []))
    monkeypatch.setattr(evaluate, "efficiency", lambda *args, **kwargs: {})
    code = evaluate.main(["--checkpoint", "ckpt", "--target", "tiny=unused", "--out", str(tmp_path),
                          "--no-plots", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "results.json").read_text())["targets"]["tiny"]
    assert report["patch_auc"] == pytest.approx(_hand_auc(PREDICTORS["G"])[0], abs=1e-6)
    assert "G patch %" in capsys.readouterr().out


def test_training_evaluation_honours_every_eval_key(monkeypatch, tmp_path):
    """The evaluation inside a training run gets the same ``eval.*`` section, whole."""
    import zxvad.data
    from zxvad.run import worker

    cfg = _patch_config()
    monkeypatch.setattr(zxvad.data, "EvalLoader", lambda shards, size, device: list(_clips()))
    state = SimpleNamespace(G=HalfLast())
    results, figures, files = worker._evaluate(state, cfg, {"tiny": ["unused.tar"]}, torch.device("cpu"),
                                               step=3, folder=tmp_path, last=False)
    assert results["tiny"].patch_auc == pytest.approx(_hand_auc(PREDICTORS["G"])[0], abs=1e-6)
    assert len(results["tiny"].top) == 2  # eval.top_frames
    assert figures == {} and files == [tmp_path / "eval" / "results.json"]
