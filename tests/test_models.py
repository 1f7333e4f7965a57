"""G, D, N and R: sizes against the paper, the memory's shrinkage, R frozen and seeded."""

import math

import pytest
import torch
import torch.nn.functional as F

from zxvad import config
from zxvad.losses import memory_loss
from zxvad.models import (BACKBONES, Generator, MemoryModule, PatchDiscriminator, build_backbone,
                          build_generator, build_models, count_parameters, generator_gmacs)


def test_plain_unet_matches_liu_et_al():
    G = Generator(T=4, width=64, memory_items=0)
    assert count_parameters(G) == 7_704_195
    assert generator_gmacs(G, 256, 4) == pytest.approx(37.2, abs=0.05)


def test_paper_generator_matches_table_3():
    G = build_generator(config.load("paper").model)
    params = count_parameters(G)
    assert params == 7_704_195 + 2000 * 512  # the memory adds K x Q items and nothing else
    assert abs(params - 8.73e6) / 8.73e6 < 0.01
    gmacs = generator_gmacs(G, 256, 4)
    assert 37.2 < gmacs <= 43.1
    assert next(G.parameters()).device.type == "cpu"  # counted on a meta copy


def test_generator_shapes_and_gradients():
    G = Generator(T=4, width=8, memory_items=20, memory_dim=64)
    frames = torch.rand(2, 4, 3, 32, 48) * 2 - 1
    out = G(frames)
    assert out.prediction.shape == (2, 3, 32, 48)
    assert out.prediction.abs().max() <= 1
    assert out.memory_weights.shape == (2, 20, 4, 6)
    entropy = memory_loss(out.memory_weights)
    assert entropy.dim() == 0 and entropy.item() > 0
    (out.prediction.mean() + entropy).backward()
    assert G.memory.items.grad is not None and G.memory.items.grad.abs().sum() > 0
    assert G.inc[0].weight.grad.abs().sum() > 0


def test_generator_without_memory_reports_no_entropy():
    out = Generator(T=2, width=8, memory_items=0)(torch.zeros(1, 2, 3, 16, 16))
    assert memory_loss(out.memory_weights).item() == 0
    assert out.memory_weights.shape == (1, 0, 2, 2)


def test_hard_shrinkage_zeroes_small_weights_and_renormalises():
    torch.manual_seed(0)
    memory = MemoryModule(items=50, dim=8, shrink_threshold=0.02)  # 1/K = 0.02: about half cut
    queries = torch.randn(30, 8)
    raw = (F.normalize(queries, dim=1) @ F.normalize(memory.items, dim=1).t()).softmax(dim=1)
    shrunk = memory.address(queries)
    below, above = raw < 0.02, raw > 0.02
    assert below.sum() > 100 and above.sum() > 100
    assert torch.all(shrunk[below] == 0)
    assert torch.all(shrunk[above] > 0)
    torch.testing.assert_close(shrunk.sum(dim=1), torch.ones(30))
    # above lambda the shrinkage is ~identity, so the kept weights keep their proportions
    row = shrunk[0][above[0]] / raw[0][above[0]]
    torch.testing.assert_close(row, row.mean().expand_as(row), rtol=1e-4, atol=0)


def test_memory_read_out_and_entropy():
    torch.manual_seed(0)
    memory = MemoryModule(items=6, dim=4, shrink_threshold=0.0005)
    z = torch.randn(2, 4, 3, 5)
    z_hat, weights = memory(z)
    assert z_hat.shape == z.shape and weights.shape == (2, 6, 3, 5)
    w = weights.permute(0, 2, 3, 1).reshape(-1, 6)
    torch.testing.assert_close(z_hat.permute(0, 2, 3, 1).reshape(-1, 4), w @ memory.items)
    torch.testing.assert_close(memory_loss(weights), -(w * w.log()).sum(dim=1).mean())


def test_generator_rejects_bad_shapes():
    G = Generator(T=4, width=8, memory_items=10, memory_dim=64)
    with pytest.raises(ValueError, match=r"expected \(B, 4, 3, H, W\)"):
        G(torch.zeros(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        G(torch.zeros(1, 4, 3, 36, 32))
    with pytest.raises(ValueError, match="memory_dim=100: must equal 8 \\* width = 64"):
        Generator(width=8, memory_items=10, memory_dim=100)


def test_patch_discriminator_is_pix2pix():
    assert count_parameters(PatchDiscriminator(3, 64, 3)) == 2_765_633  # pix2pix's 70x70 D
    D = PatchDiscriminator(3, 16, 3)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    logits, features = D(x, return_features=True)
    assert logits.shape == (2, 1, 6, 6)
    assert features.shape == (2, 128, 7, 7)
    torch.testing.assert_close(D(x), logits)
    assert logits.min() < 0  # no sigmoid at the end
    with pytest.raises(ValueError, match="norm 'group'"):
        PatchDiscriminator(norm="group")


def test_backbone_is_frozen_and_seeded():
    state = torch.get_rng_state()
    R = build_backbone("resnet50", seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    same, other = build_backbone("resnet50", seed=0), build_backbone("resnet50", seed=1)
    first = next(R.parameters())
    assert torch.equal(first, next(same.parameters()))
    assert not torch.equal(first, next(other.parameters()))
    assert not any(p.requires_grad for p in R.parameters())
    R.train()
    assert not R.training and not any(m.training for m in R.modules())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    features = R(x)
    assert features.shape == (2, 2048, 2, 2) and not features.requires_grad
    torch.testing.assert_close(same(x), features)


@pytest.mark.parametrize("name,channels", [("resnet50", 2048), ("resnet152", 2048),
                                           ("densenet161", 2208), ("alexnet", 256),
                                           ("mnasnet1_0", 1280)])
def test_every_backbone_gives_feature_maps(name, channels):
    features = build_backbone(name)(torch.rand(1, 3, 128, 128) * 2 - 1)
    assert features.dim() == 4 and features.shape[:2] == (1, channels)
    assert torch.isfinite(features).all() and features.min() >= 0  # all end in a ReLU


def test_unknown_backbone_names_the_choices():
    choices = ", ".join(BACKBONES)
    with pytest.raises(ValueError, match=f"backbone 'vgg16': expected one of {choices}"):
        build_backbone("vgg16")


def test_build_models_from_demo_config():
    cfg = config.load("demo").model
    models = build_models(cfg)
    assert isinstance(models.D, PatchDiscriminator) and isinstance(models.N, PatchDiscriminator)
    assert models.D is not models.N
    assert models.G.memory.items.shape == (cfg.memory_items, cfg.memory_dim)
    out = models.G(torch.zeros(1, cfg.T, 3, cfg.image_size, cfg.image_size))
    assert out.prediction.shape == (1, 3, cfg.image_size, cfg.image_size)
    assert models.R.seed == cfg.backbone_seed and models.R.name == cfg.backbone


def test_backbone_input_size_gives_small_frames_a_finer_map():
    from zxvad.models import build_backbone

    x = torch.zeros(2, 3, 32, 32)
    assert build_backbone("resnet50", 0)(x).shape[-2:] == (1, 1)
    R = build_backbone("resnet50", 0, input_size=128)
    assert R(x).shape[-2:] == (4, 4)
    assert R(torch.zeros(1, 3, 128, 128)).shape[-2:] == (4, 4)  # already that size: untouched


def _preset_memory(name="demo", **overrides):
    torch.manual_seed(0)
    cfg = config.load(name, [f"model.{k}={v}" for k, v in overrides.items()]).model
    return build_generator(cfg).memory


def test_literal_memory_cannot_be_sparse_but_the_presets_can():
    literal = _preset_memory(memory_temperature=1.0, shrink_relative=0.0, memory_shrink="continuous")
    memory = _preset_memory()
    queries = memory.items.detach() + 0.01 * torch.randn_like(memory.items)  # each near one item
    with torch.no_grad():
        w_literal = literal.address(literal.items.detach().clone())
        w = memory.address(queries)
    K = memory.items.shape[0]
    # softmax over cosines in [-1, 1]: no weight can exceed e^2 / (K - 1 + e^2), however z is
    assert w_literal.max() < math.e**2 / (K - 1 + math.e**2) + 1e-6
    assert memory.shrink_threshold == pytest.approx(1 / K)  # lambda relative to K
    assert w.max(dim=1).values.min() > 0.5  # one item wins
    assert (w > 0).float().sum(dim=1).mean() < 0.1 * K  # and few are kept


def _grad_norm_near_threshold(memory):
    """|d sum(c * w') / dz| with lambda 2 ulp below the weight nearest 1/K, over no shrinkage."""
    torch.manual_seed(1)
    z = torch.randn(4, memory.items.shape[1])
    with torch.no_grad():
        raw = (F.normalize(z, dim=1) @ F.normalize(memory.items, dim=1).t() / memory.temperature)
        raw = raw.softmax(dim=1)
    c = torch.randn(memory.items.shape[0])
    norms = []
    near = raw[0][(raw[0] - 1 / raw.shape[1]).abs().argmin()]
    below = torch.nextafter(torch.nextafter(near, torch.zeros(())), torch.zeros(()))
    for lam in (0.0, below.item()):
        memory.shrink_threshold = lam
        zz = z.clone().requires_grad_(True)
        (memory.address(zz) * c).sum().backward()
        norms.append(zz.grad.norm().item())
    return norms[1] / norms[0]


def test_shrinkage_gradient_stays_bounded_next_to_lambda():
    literal = _preset_memory(memory_shrink="continuous")
    assert _grad_norm_near_threshold(literal) > 20  # MemAE's w / (|w - l| + eps) at w ~ l
    assert _grad_norm_near_threshold(_preset_memory()) < 2


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_critics_score_a_frame_alone_as_in_a_mixed_batch(norm):
    torch.manual_seed(0)
    critic = PatchDiscriminator(3, 8, 3, norm).train()
    frames, others = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(5, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(critic(torch.cat([frames, others]))[:3], critic(frames))
    batch = PatchDiscriminator(3, 8, 3, "batch").train()
    assert (batch(torch.cat([frames, others]))[:3] - batch(frames)).abs().max() > 1e-2


def test_presets_use_batch_independent_critics():
    for name in ("demo", "paper"):
        N = build_models(config.load(name, ["model.backbone=mnasnet1_0",
                                            "model.backbone_layer=last"]).model).N
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in N.modules()), name


def _winning_items(query: str) -> int:
    """Distinct items that win (argmax) over every bottleneck position of an untrained demo G."""
    torch.manual_seed(0)
    G = build_generator(config.load("demo", [f"model.memory_query={query}"]).model)
    frames = F.avg_pool2d(torch.rand(16, 3, 64, 64) * 2 - 1, 5, 1, 2).view(4, 4, 3, 64, 64)
    with torch.no_grad():
        weights = G(frames).memory_weights  # (B, K, h, w)
    return int(weights.argmax(dim=1).unique().numel())


def test_centred_queries_spread_over_the_memory_where_raw_ones_collapse():
    # G's bottleneck ends in a ReLU: raw queries share the positive orthant and pick one item
    assert _winning_items("raw") <= 2
    assert _winning_items("centred") >= 8


def test_residual_output_starts_as_the_last_frame_and_learns_the_change():
    from zxvad.models import Generator

    torch.manual_seed(0)
    frames = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    G = Generator(T=4, width=4, memory_items=0, output="residual")
    torch.testing.assert_close(G(frames).prediction, frames[:, -1])  # untrained: copy_last
    target = (frames[:, -1] + 0.1).clamp(-1, 1)
    opt = torch.optim.SGD(G.parameters(), lr=0.1)
    for _ in range(2):  # the zero last layer takes the first step; then the U-Net learns too
        opt.zero_grad()
        (G(frames).prediction - target).abs().mean().backward()
        opt.step()
    assert G.outc.weight.abs().sum() > 0 and G.inc[0].weight.grad.abs().sum() > 0
    paper = Generator(T=4, width=4, memory_items=0)
    assert (paper(frames).prediction - frames[:, -1]).abs().mean() > 0.1  # tanh output: no copy
    with pytest.raises(ValueError, match="output"):
        Generator(T=4, width=4, memory_items=0, output="delta")


def test_backbone_layer3_is_the_stage_before_the_last_with_the_same_weights():
    from zxvad.models import build_backbone

    x = torch.rand(1, 3, 64, 64) * 2 - 1
    last, layer3 = build_backbone("resnet50", 0), build_backbone("resnet50", 0, layer="layer3")
    features = layer3(x)
    assert features.shape[1:] == (1024, 4, 4) and last(x).shape[1:] == (2048, 2, 2)
    torch.testing.assert_close(last.body[-1](features), last(x))  # layer4 of layer3's maps
    with pytest.raises(ValueError, match="layer3"):
        build_backbone("alexnet", 0, layer="layer3")
    with pytest.raises(config.ConfigError, match="model.backbone_layer"):
        config.load("demo", ["model.backbone=alexnet", "model.backbone_layer=layer3"])


def test_a_wider_mask_spread_cuts_a_smaller_object():
    from zxvad.synthesis import masks_from_features

    torch.manual_seed(0)
    features = torch.rand(2, 8, 16, 16) + F.pad(torch.ones(2, 8, 6, 6) * 3, (4, 6, 4, 6))
    features[:, :, 6:8, 6:8] += 3  # a brighter core inside the object
    areas = [masks_from_features(features, (64, 64), 0.1, k).mean().item() for k in (0.5, 2.0)]
    assert 0 < areas[1] < areas[0]
