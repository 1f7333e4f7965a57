"""PSNR, per-video normalisation and the pooled frame-level AUC."""

import json

import numpy as np
import pytest
import torch

from zxvad.scoring import (VideoResult, baseline_predictions, frame_auc, normalize_scores,
                           per_video_scores, psnr)


def test_psnr_on_unit_range():
    target = torch.full((2, 3, 8, 8), 0.2)
    pred = torch.zeros(2, 3, 8, 8)
    # [-1,1] difference 0.2 is 0.1 on [0,1]: MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(pred, target).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert psnr(target, target).tolist() == pytest.approx([100.0, 100.0])
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(pred, target[:1])


def test_normalize_scores():
    assert normalize_scores(np.array([10.0, 20.0, 30.0])).tolist() == [1.0, 0.5, 0.0]
    flat = normalize_scores(np.array([25.0, 25.0, 25.0]))
    assert flat.tolist() == [0.0, 0.0, 0.0] and not np.isnan(flat).any()


def test_frame_auc_hand_computed():
    # T = 1, so the first label of each video is not scored.
    # a: PSNR [30, 20, 25] -> scores [0, 1, .5], scored labels [0, 1, 0]
    # b: PSNR [40, 10, 40] -> scores [0, 1, 0],  scored labels [0, 0, 1]
    # positives score {1, 0}; negatives {0, .5, 0, 1}.
    # positive 1 beats 0, .5, 0 and ties 1: 3.5; positive 0 ties 0, 0 and loses to .5, 1: 1.0
    # AUC = (3.5 + 1.0) / (2 * 4) = 0.5625
    videos = [VideoResult("a", np.array([30.0, 20.0, 25.0]), np.array([0, 0, 1, 0])),
              VideoResult("b", np.array([40.0, 10.0, 40.0]), np.array([0, 0, 0, 1]))]
    assert frame_auc(videos, T=1) == pytest.approx(0.5625)
    pooled = per_video_scores(videos, T=1)
    assert pooled.scores.tolist() == [0.0, 1.0, 0.5, 0.0, 1.0, 0.0]
    assert pooled.labels.tolist() == [0, 1, 0, 0, 0, 1]
    assert json.loads(json.dumps(pooled.as_dict()))["b"] == {"scores": [0.0, 1.0, 0.0], "labels": [0, 0, 1]}


def test_length_mismatch_names_the_video():
    videos = [VideoResult("ok", np.ones(3), np.array([0, 0, 1, 0])),
              VideoResult("Test007", np.ones(3), np.array([0, 1, 1]))]
    with pytest.raises(ValueError, match="video 'Test007': 3 labels but 3 scores \\+ 1"):
        frame_auc(videos, T=1)


def test_one_class_raises():
    with pytest.raises(ValueError, match="AUC undefined: only label 0"):
        frame_auc([VideoResult("n", np.array([1.0, 2.0]), np.zeros(4))], T=2)


def test_constant_video_gives_no_nan():
    videos = [VideoResult("still", np.full(4, 33.0), np.array([0, 0, 0, 0, 1])),
              VideoResult("moving", np.array([30.0, 10.0]), np.array([0, 0, 1]))]
    pooled = per_video_scores(videos, T=1)
    assert not np.isnan(pooled.scores).any()
    # still: all 0 with labels [0, 0, 0, 1]; moving: [0, 1] with labels [0, 1]
    # positives {0, 1} vs negatives {0, 0, 0, 0}: (4 * .5 + 4 * 1) / 8 = 0.75
    assert frame_auc(videos, T=1) == pytest.approx(0.75)


def test_baseline_predictions_by_hand():
    # one pixel, T = 3: v = 0.2, 0.4, 0.9 -> copy_last 0.9, mean 0.5, linear 2*0.9-0.4 = 1.4 -> 1
    values = torch.tensor([0.2, 0.4, 0.9]).reshape(1, 3, 1, 1, 1).expand(1, 3, 3, 2, 2)
    preds = baseline_predictions(values)
    assert set(preds) == {"copy_last", "mean_T", "linear"}
    assert preds["copy_last"].flatten().tolist() == pytest.approx([0.9] * 12)
    assert preds["mean_T"].flatten().tolist() == pytest.approx([0.5] * 12)
    assert preds["linear"].flatten().tolist() == pytest.approx([1.0] * 12)
    down = baseline_predictions(-values)  # -0.9 - (-0.4) -> -1.4 clipped to -1
    assert down["linear"].flatten().tolist() == pytest.approx([-1.0] * 12)
    single = baseline_predictions(values[:, :1])
    assert torch.equal(single["linear"], single["copy_last"])
    with pytest.raises(ValueError, match="expected"):
        baseline_predictions(values[0])


def test_patch_psnr_is_the_worst_tile_by_hand():
    from zxvad.scoring import patch_psnr, psnr

    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[0, :, 4:8, 0:4] = 0.2  # frame 0: one 4x4 tile off by 0.1 on [0, 1]
    pred[1] = 0.1  # frame 1: every pixel off by 0.05, the same whole-frame MSE as frame 0's
    tile = patch_psnr(pred, target, 4)
    assert tile[0].item() == pytest.approx(10 * np.log10(1 / 0.1**2), abs=1e-4)  # 20 dB
    assert tile[1].item() == pytest.approx(10 * np.log10(1 / 0.05**2), abs=1e-4)
    whole = psnr(pred, target)
    # the whole frame cannot tell them apart (same MSE); the worst tile can, by 10 log10(4) dB
    assert whole[0].item() == pytest.approx(whole[1].item(), abs=1e-4)
    assert (tile[1] - tile[0]).item() == pytest.approx(10 * np.log10(4), abs=1e-4)
    torch.testing.assert_close(patch_psnr(pred, target, 8), whole)
    with pytest.raises(ValueError, match="patch 9 must lie in"):
        patch_psnr(pred, target, 9)
