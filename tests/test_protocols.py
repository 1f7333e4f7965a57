"""The evaluation protocols papers report, on hand-made scores whose AUCs are known."""

import numpy as np
import pytest

from shards.windows import clean_starts, transition_psnr
from zxvad import scoring
from zxvad.scoring import VideoResult

T = 2


def video(vid, psnr, labels):
    return VideoResult(vid, np.array(psnr, dtype=float), np.array([0] * T + labels))


def test_micro_minmax_is_the_papers_frame_auc():
    videos = [video("a", [40, 30, 39, 31], [0, 1, 0, 1]), video("b", [35, 34, 20], [0, 0, 1])]
    assert scoring.protocol_auc(videos, T, "micro_minmax") == pytest.approx(
        scoring.frame_auc(videos, T))


def test_raw_and_minmax_differ_when_videos_sit_at_different_levels():
    # within each video the abnormal frame has the lower PSNR, but video b is everywhere worse:
    # per-video min-max separates perfectly, the raw score does not
    videos = [video("a", [40, 38, 30], [0, 0, 1]), video("b", [28, 27, 20], [0, 0, 1])]
    assert scoring.protocol_auc(videos, T, "micro_minmax") == 1.0
    assert scoring.protocol_auc(videos, T, "micro_raw") == pytest.approx(6 / 8)  # a 30 dB abnormal ranks below b's normals
    assert scoring.protocol_auc(videos, T, "macro") == 1.0


def test_macro_leaves_out_single_class_videos_and_an_all_abnormal_video_lowers_minmax():
    good = video("a", [40, 39, 20, 21], [0, 0, 1, 1])
    all_abnormal = video("b", [30, 25, 35], [1, 1, 1])
    assert scoring.protocol_auc([good, all_abnormal], T, "macro") == 1.0
    # min-max spreads b over [0, 1]: its least abnormal frame (35 dB) scores 0, below a's normals
    assert scoring.protocol_auc([good, all_abnormal], T, "micro_minmax") < 1.0
    assert np.isnan(scoring.protocol_auc([all_abnormal], T, "macro"))


def test_aupr_and_eer_of_a_perfect_and_a_reversed_score():
    perfect = [video("a", [40, 39, 20, 21], [0, 0, 1, 1])]
    reversed_ = [video("a", [20, 21, 40, 39], [0, 0, 1, 1])]
    assert scoring.pooled_aupr_eer(perfect, T) == (1.0, 0.0)
    aupr, eer = scoring.pooled_aupr_eer(reversed_, T)
    assert aupr < 0.6 and eer == 1.0


def test_smoothing_keeps_the_mean_and_fills_a_one_frame_dip():
    s = np.array([0, 0, 0, 1.0, 0, 0, 0])
    out = scoring.smooth_scores(s, 1.0)
    assert out.shape == s.shape and out[3] < 1 and out[2] > 0 and out[3] == out.max()
    np.testing.assert_allclose(scoring.smooth_scores(s, 0), s)
    with pytest.raises(ValueError, match="protocol 'nope'"):
        scoring.protocol_auc([video("a", [1, 2], [0, 1])], T, "nope")


def test_all_protocols_names_every_figure():
    videos = [video("a", [40, 30, 39, 31], [0, 1, 0, 1])]
    assert set(scoring.all_protocols(videos, T)) == {*scoring.PROTOCOLS, "aupr", "eer"}


def test_clean_starts_drop_windows_with_a_duplicate_or_a_cut():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 16, 16, 3)).astype(np.int16)
    frames = [base[0]]
    for i in range(1, 10):
        step = rng.integers(-4, 5, base.shape[1:])
        frames.append(np.clip(frames[-1] + step, 0, 255))
    frames[5] = frames[4].copy()  # a duplicate: step 4->5
    frames[8] = rng.integers(0, 255, base.shape[1:])  # a cut: steps 7->8 and 8->9
    steps = transition_psnr(np.stack(frames).astype(np.uint8))
    assert steps[4] == pytest.approx(100.0) and steps[7] < 18 and 20 < steps[0] < 60
    ok = clean_starts(steps, window=3)
    # windows of 3 frames start at 0..7; those holding step 4 (starts 3, 4) or steps 7, 8 (6, 7) go
    assert ok.tolist() == [True, True, True, False, False, True, False, False]
    assert clean_starts(steps, window=20).size == 0


def test_pair_decomposition_by_hand_and_against_the_pooled_auc():
    # a: normals 40, 39 dB (min-max scores 0, 1/20), abnormal 20 dB (score 1)
    # b: all abnormal 30, 25, 35 dB -> scores 0.5, 1, 0: its 35 dB frame ranks below a's normals
    good = video("a", [40, 39, 20], [0, 0, 1])
    all_abnormal = video("b", [30, 25, 35], [1, 1, 1])
    parts = scoring.pair_decomposition([good, all_abnormal], T)
    assert parts["within_video"] == {"auc": 1.0, "share": pytest.approx(2 / 8)}
    # b's 3 frames against a's 2 normals: 0.5 > both, 1 > both, 0 = one (tie, 1/2) and < other
    assert parts["across_single_class"]["auc"] == pytest.approx(4.5 / 6)
    assert parts["across_single_class"]["share"] == pytest.approx(6 / 8)
    assert np.isnan(parts["across_mixed"]["auc"]) and parts["across_mixed"]["share"] == 0
    assert parts["all"]["auc"] == pytest.approx(6.5 / 8)
    assert parts["all"]["auc"] == pytest.approx(scoring.protocol_auc([good, all_abnormal], T, "micro_minmax"))


def test_pair_decomposition_adds_up_on_random_videos():
    rng = np.random.default_rng(0)
    videos = [video(str(k), rng.normal(30, 3, 12), rng.integers(0, 2, 12).tolist()) for k in range(4)]
    videos.append(video("x", rng.normal(30, 3, 9), [1] * 9))
    for protocol in ("micro_minmax", "micro_raw"):
        parts = scoring.pair_decomposition(videos, T, protocol)
        assert sum(parts[k]["share"] for k in scoring.PAIR_KINDS) == pytest.approx(1.0)
        assert sum(parts[k]["auc"] * parts[k]["share"] for k in scoring.PAIR_KINDS) == pytest.approx(
            parts["all"]["auc"])
        assert parts["all"]["auc"] == pytest.approx(scoring.protocol_auc(videos, T, protocol))
