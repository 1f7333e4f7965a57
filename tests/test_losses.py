"""The zxVAD losses on small hand-computed cases."""

import math

import pytest
import torch

from zxvad import losses
from zxvad.config import LossConfig


def img(rows):
    """A (1, 1, H, W) image from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_intensity_loss_is_mean_squared_error():
    # (1-0)^2 + 0 + 0 + (1-0)^2 over 4 pixels = 0.5
    assert losses.intensity_loss(img([[0, 0], [0, 0]]), img([[1, 0], [0, 1]])).item() == pytest.approx(0.5)


def test_gradient_loss_hand_computed():
    pred, target = img([[0, 2], [0, 0]]), img([[0, 1], [1, 1]])
    # x: |dx pred| = [2, 0], |dx target| = [1, 0] -> mean |diff| = 0.5
    # y: |dy pred| = [0, 2], |dy target| = [1, 0] -> mean |diff| = 1.5
    assert losses.gradient_loss(pred, target).item() == pytest.approx(2.0)
    # a constant offset has no gradient difference
    assert losses.gradient_loss(pred + 0.3, pred).item() == pytest.approx(0.0, abs=1e-7)


def test_ssim_loss_of_constant_images():
    # [-1,1] values -0.6 and 0.4 are 0.2 and 0.7 on [0,1]; with zero variance SSIM reduces to
    # the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    a, b = torch.full((1, 3, 16, 16), -0.6), torch.full((1, 3, 16, 16), 0.4)
    c1 = 0.01 ** 2
    expected = 1 - (2 * 0.2 * 0.7 + c1) / (0.2 ** 2 + 0.7 ** 2 + c1)
    assert losses.ssim_loss(a, b).item() == pytest.approx(expected, abs=1e-4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert losses.ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_reconstruction_loss_sums_its_terms():
    pred, target = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    terms = losses.reconstruction_loss(pred, target)
    assert set(terms) == {"mse", "ssim", "gd", "rec"}
    assert terms["rec"].item() == pytest.approx((terms["mse"] + terms["ssim"] + terms["gd"]).item())
    assert terms["mse"].item() == pytest.approx(((pred - target) ** 2).mean().item())


def test_memory_loss_is_entropy():
    w = torch.tensor([[0.5, 1.0], [0.5, 0.0]])[None, :, None, :]  # (1, K=2, 1, 2 positions)
    # position 1: -2 * 0.5 ln 0.5 = ln 2; position 2: one-hot -> 0; mean = ln2 / 2
    assert losses.memory_loss(w).item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_lsgan_terms():
    assert losses.lsgan_generator_term(torch.tensor([0.0, 2.0])).item() == pytest.approx(0.5)
    assert losses.lsgan_generator_term(torch.ones(2, 1, 3, 3)).item() == 0.0
    assert losses.discriminator_loss(torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)).item() == 0.0
    # 1/2 * 1^2 (fake at 1) + 1/2 * (0 - 1)^2 (real at 0)
    assert losses.discriminator_loss(torch.zeros(1), torch.ones(1)).item() == pytest.approx(1.0)


def test_normalcy_loss():
    assert losses.normalcy_loss(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)).item() == 0.0
    # 1/2 (0.5 - 1)^2 + 1/2 0.5^2 = 0.25
    assert losses.normalcy_loss(torch.full((1,), 0.5), torch.full((1,), 0.5)).item() == pytest.approx(0.25)


def test_relative_normalcy_loss_hand_computed_and_sign():
    n_hat = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    n_tilde = torch.tensor([0.0, 2.0]).view(2, 1, 1, 1)
    # E[N(v~)] = 1, E[N(v^)] = 2: 1/2 mean((1-1-1)^2, (3-1-1)^2) + 1/2 mean((0-2+1)^2, (2-2+1)^2) = 1
    assert losses.relative_normalcy_loss(n_hat, n_tilde).item() == pytest.approx(1.0)
    # zero exactly when v^ scores 1 above v~; large when the order is reversed
    good = losses.relative_normalcy_loss(torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -0.5))
    bad = losses.relative_normalcy_loss(torch.full((2, 1, 2, 2), -0.5), torch.full((2, 1, 2, 2), 0.5))
    assert good.item() == 0.0
    assert bad.item() == pytest.approx(4.0)  # 1/2 (-2)^2 + 1/2 2^2


def test_attention_affirmation_loss():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1  # area-resized to 2x2: [[1, 0], [0, 0]]
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert losses.attention_affirmation_loss(torch.ones(1, 2, 2), target, mask).item() == 0.0
    # 1/2 mean((1-0)^2) + 1/2 mean([1, 0, 0, 0]) = 0.5 + 0.125
    zeros = torch.zeros(1, 2, 2)
    assert losses.attention_affirmation_loss(zeros, zeros, mask).item() == pytest.approx(0.625)
    # one covered pixel of the 2x2 cell -> target 0.25 there
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    assert losses.attention_affirmation_loss(torch.ones(1, 2, 2), zeros, mask).item() == pytest.approx(0.5 * 0.25 ** 2 / 4)


def arcface_by_hand(cos_target, cos_other, margin_deg=28.6, s=64.0):
    """Eq. (5) for one sample: -log(e^{s cos(w_y + m)} / (e^{s cos(w_y + m)} + e^{s cos w_j}))."""
    logit_y = s * math.cos(math.acos(cos_target) + math.radians(margin_deg))
    return -logit_y + math.log(math.exp(logit_y) + math.exp(s * cos_other))


def test_relative_attention_affirmation_separated_is_lower():
    arcface = losses.ArcFace(embedding_size=4)
    with torch.no_grad():
        arcface.arcface.W.zero_()
        arcface.arcface.W[0, losses.NORMAL] = 1.0
        arcface.arcface.W[1, losses.ABNORMAL] = 1.0
    e0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None]  # vec -> (1, 0, 0, 0): the normal centre
    e1 = torch.tensor([[0.0, 1.0], [0.0, 0.0]])[None]  # vec -> (0, 1, 0, 0): the abnormal centre
    separated = arcface(e0, e0, e1)
    swapped = arcface(e1, e1, e0)
    # separated: every sample has cos 1 to its centre and 0 to the other
    assert separated.item() == pytest.approx(arcface_by_hand(1.0, 0.0), abs=1e-4)
    # swapped: cos 0 to its own centre, 1 to the other
    assert swapped.item() == pytest.approx(arcface_by_hand(0.0, 1.0), rel=1e-4)
    assert separated.item() < 1e-6 < 90 < swapped.item()
    with pytest.raises(ValueError, match="L_RAA was built for 4"):
        arcface(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))


def test_augmentation_changes_images_within_range():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = losses.build_augmentation()(x)
    assert y.shape == x.shape
    assert (y - x).abs().mean() > 0.05
    assert y.min() >= -1e-4 and y.max() <= 1 + 1e-4


UNIFORM_8 = torch.full((2, 8, 2, 2), 1 / 8)  # memory weights with entropy log 8


def test_generator_objective_combines_eq1():
    cfg = LossConfig(alpha_D=0.2, alpha_N=0.5, mem_weight=0.01)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = losses.generator_objective(x, x, UNIFORM_8, torch.zeros(2, 1, 2, 2),
                                     torch.zeros(2, 1, 2, 2), cfg)
    assert out["l_rec"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["l_bb"].item() == pytest.approx(0.01 * math.log(8), abs=1e-5)
    assert out["l_g_adv_d"].item() == out["l_g_adv_n"].item() == pytest.approx(0.5)
    assert out["l_g"].item() == pytest.approx(0.01 * math.log(8) + 0.2 * 0.5 + 0.5 * 0.5, abs=1e-5)
    off = losses.generator_objective(x, x, UNIFORM_8, torch.zeros(2, 1, 2, 2), None, cfg)
    assert off["l_g_adv_n"].item() == 0.0
    assert off["l_g"].item() == pytest.approx(0.01 * math.log(8) + 0.1, abs=1e-5)


def test_normalcy_objective_weights_eq6():
    cfg = LossConfig(alpha_n=2.0, alpha_m=0.5, alpha_aa=3.0, alpha_raa=0.1)
    torch.manual_seed(0)
    n_hat, n_tilde = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    a, ag, at = torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.rand(2, 4, 4)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    arcface = losses.ArcFace(16, cfg.arcface_margin, cfg.arcface_scale)
    out = losses.normalcy_objective(n_hat, n_tilde, a, ag, at, mask, arcface, cfg)
    assert out["l_n"].item() == pytest.approx(losses.normalcy_loss(n_hat, n_tilde).item())
    assert out["l_rn"].item() == pytest.approx(losses.relative_normalcy_loss(n_hat, n_tilde).item())
    assert out["l_aa"].item() == pytest.approx(losses.attention_affirmation_loss(a, at, mask).item())
    expected = 2 * out["l_n"] + 0.5 * out["l_rn"] + 3 * out["l_aa"] + 0.1 * out["l_raa"]
    assert out["l_n_total"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["l_n_total"].backward()
    assert arcface.arcface.W.grad is not None and arcface.arcface.W.grad.abs().sum() > 0


def test_normalised_raa_is_raa_over_s_and_on_the_scale_of_the_other_terms():
    torch.manual_seed(0)
    raw, normalised = losses.ArcFace(16), losses.ArcFace(16, normalise=True)
    normalised.load_state_dict(raw.state_dict())
    worst = 0.0
    for _ in range(20):  # random and adversarial maps: the normalised loss stays below 2 + log(2)/s
        a, ag, at = (torch.rand(4, 4, 4) for _ in range(3))
        assert normalised(a, ag, at).item() == pytest.approx(raw(a, ag, at).item() / 64, rel=1e-5)
        worst = max(worst, normalised(at, at, a).item())
    assert worst <= 2 + math.log(2) / 64
    assert raw(a, ag, at).item() > 5  # the literal form: s times a cosine gap


def _fit_normal_attention(scale: str, steps: int = 300) -> float:
    """Minimise L_AA's normal term 1/2 (1 - A(v^))^2 over free features; its final value."""
    from zxvad.synthesis import scda_attention

    torch.manual_seed(0)
    features = torch.randn(2, 8, 4, 4, requires_grad=True)
    opt = torch.optim.Adam([features], lr=0.05)
    for _ in range(steps):
        att = scda_attention(features, scale)
        loss = losses.attention_affirmation_loss(att, att.detach(), torch.zeros(2, 1, 16, 16))
        normal = 0.5 * (1 - att).pow(2).mean()
        opt.zero_grad()
        normal.backward()
        opt.step()
    return float(0.5 * (1 - scda_attention(features, scale)).pow(2).mean())


def test_l_aa_normal_target_is_reachable_with_max_scaled_attention_only():
    # min-max scaling pins one cell of every map at 0: the normal term never drops below
    # 1/2 * 1/(h w) = 1/32 on a 4x4 map; A / max(A) reaches A(v^) = 1 everywhere.
    assert _fit_normal_attention("minmax") >= 0.5 / 16 - 1e-6
    assert _fit_normal_attention("max") < 1e-3


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_presets_scale_n_attention_by_its_max(preset):
    from zxvad import config
    from zxvad.synthesis import scda_attention

    cfg = config.load(preset, [])
    uniform = torch.full((1, 8, 3, 3), 0.25)
    torch.testing.assert_close(scda_attention(uniform, cfg.loss.attention_scale), torch.ones(1, 3, 3))


def test_max_scaled_attention_divides_by_the_largest_magnitude():
    from zxvad.synthesis import scda_attention

    features = torch.randn(3, 16, 5, 7)  # LeakyReLU features can sum below 0
    att = scda_attention(features, "max")
    summed = features.sum(1)
    torch.testing.assert_close(att, summed / summed.flatten(1).abs().max(1).values[:, None, None])
    assert float(att.abs().max()) <= 1 + 1e-6
    positive = features.abs() + 0.1
    torch.testing.assert_close(scda_attention(positive, "max").flatten(1).max(1).values, torch.ones(3))
    with pytest.raises(ValueError, match="scale 'sum'"):
        scda_attention(features, "sum")
