"""One training step at a tiny size: every term, every update, the N switch, state round trips."""

import io
import math

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from zxvad import losses
from zxvad.ddp import unwrap
from zxvad.step import build_state, train_step

from helpers import tiny_config

TINY = ["model.image_size=64", "model.disc_width=4", "model.backbone=mnasnet1_0", "train.batch_size=2"]
TERMS = ["l_mse", "l_ssim", "l_gd", "l_rec", "l_mem", "l_bb", "l_g_adv_d", "l_g_adv_n", "l_g",
         "l_d", "l_n", "l_rn", "l_aa", "l_raa", "l_n_total", "mask_area"]


def tiny_cfg(*overrides):
    return tiny_config(*TINY, *overrides)


def squares(batch, clip_len=5, size=64, side=16, seed=0):
    """Clips of a bright square moving 2 px per frame over a smooth random background."""
    g = torch.Generator().manual_seed(seed)
    background = torch.nn.functional.interpolate(torch.rand(batch, 3, 4, 4, generator=g) - 0.8,
                                                 size=(size, size), mode="bilinear")
    clips = background[:, None].repeat(1, clip_len, 1, 1, 1)
    start = torch.randint(0, size - side - 2 * clip_len, (batch, 2), generator=g)
    for b in range(batch):
        y, x = start[b].tolist()
        for t in range(clip_len):
            clips[b, t, :, y + 2 * t:y + 2 * t + side, x + 2 * t:x + 2 * t + side] = 0.9
    return clips


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny convolutions run ~10x slower with two threads on a busy 2-core machine (conftest.py)."""


def snapshot(module):
    return [p.detach().clone() for p in unwrap(module).parameters()]


def changed(module, before):
    return any(not torch.equal(a, b) for a, b in zip(before, unwrap(module).parameters()))


def test_train_step_returns_every_term_and_updates_g_d_n_arcface():
    torch.manual_seed(0)
    state = build_state(tiny_cfg(), "cpu")
    assert state.arcface.embedding_size == 49  # N's last features at 64x64: 7x7
    before = {name: snapshot(getattr(state, name)) for name in ("G", "D", "N", "arcface", "R")}
    clips = squares(2)
    out = train_step(state, clips, squares(2, seed=1)[:, 0], generator=torch.Generator().manual_seed(0))
    assert set(TERMS) <= set(out)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert 0 < out["mask_area"] < 1
    assert out["l_rec"] == pytest.approx(out["l_mse"] + out["l_ssim"] + out["l_gd"], rel=1e-5)
    w = state.cfg.loss
    assert out["l_g"] == pytest.approx(out["l_bb"] + w.alpha_D * out["l_g_adv_d"]
                                       + w.alpha_N * out["l_g_adv_n"], rel=1e-5)
    assert out["l_n_total"] == pytest.approx(w.alpha_n * out["l_n"] + w.alpha_m * out["l_rn"]
                                             + w.alpha_aa * out["l_aa"] + w.alpha_raa * out["l_raa"],
                                             rel=1e-5)
    assert 0 < out["l_raa"] < 2.1  # L_RAA / s (the literal form runs at 12-30 at the start)
    for name in ("G", "D", "N", "arcface"):
        assert changed(getattr(state, name), before[name]), f"{name} was not updated"
    assert not changed(state.R, before["R"])
    assert state.step == 1


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_critics_score_v_hat_the_same_in_their_update_and_in_gs(norm):
    """D and N judge v^ inside their mixed batch and alone in G's update: the scores must agree."""
    torch.manual_seed(0)
    state = build_state(tiny_cfg(f"model.critic_norm={norm}"), "cpu")
    for group in (*state.opt_d.param_groups, *state.opt_n.param_groups):
        group["lr"] = 0.0  # the critics stay put between their update and G's (a config rejects lr 0)
    seen = {"D": [], "N": []}
    for name in seen:
        unwrap(getattr(state, name)).register_forward_hook(
            lambda m, i, out, name=name: seen[name].append((out[0] if isinstance(out, tuple) else out).detach()))
    train_step(state, squares(2), squares(2, seed=1)[:, 0], generator=torch.Generator().manual_seed(0))
    (d_own, d_g), (n_own, n_g) = seen["D"], seen["N"]
    gap = max((d_own[2:] - d_g).abs().max().item(), (n_own[:2] - n_g).abs().max().item())
    if norm == "batch":  # pix2pix's default re-centres v^ alone: the reason for the presets' choice
        assert gap > 1e-2
    else:
        assert gap < 1e-5


def test_alpha_n_zero_switches_the_normalcy_classifier_off():
    torch.manual_seed(0)
    state = build_state(tiny_cfg("loss.alpha_N=0"), "cpu")
    before = {name: snapshot(getattr(state, name)) for name in ("G", "D", "N", "arcface")}
    out = train_step(state, squares(2), squares(2, seed=1)[:, 0])
    assert out["l_n_total"] == out["l_g_adv_n"] == out["mask_area"] == 0.0
    assert out["l_g"] == pytest.approx(out["l_bb"] + state.cfg.loss.alpha_D * out["l_g_adv_d"], rel=1e-5)
    assert changed(state.G, before["G"]) and changed(state.D, before["D"])
    assert not changed(state.N, before["N"]) and not changed(state.arcface, before["arcface"])


def test_state_dict_round_trip_restores_exactly():
    cfg = tiny_cfg()
    clips, donors = squares(2), squares(2, seed=1)[:, 0]
    torch.manual_seed(0)
    a = build_state(cfg, "cpu")
    train_step(a, clips, donors, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    torch.manual_seed(123)  # different initial weights
    b = build_state(cfg, "cpu")
    b.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert b.step == 1
    for name in ("G", "D", "N", "arcface"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    results = []
    for state in (a, b):  # the next step is identical, so the optimiser moments came back too
        torch.manual_seed(7)
        results.append(train_step(state, clips, donors, generator=torch.Generator().manual_seed(2)))
    assert results[0] == results[1]


def test_load_state_dict_rejects_other_backbone_seed_and_missing_keys():
    torch.manual_seed(0)
    sd = build_state(tiny_cfg(), "cpu").state_dict()
    other = build_state(tiny_cfg("model.backbone_seed=5"), "cpu")
    with pytest.raises(ValueError, match="R was mnasnet1_0 seed 0, the config says mnasnet1_0 seed 5"):
        other.load_state_dict(sd)
    del sd["opt_n"]
    with pytest.raises(ValueError, match="missing opt_n"):
        build_state(tiny_cfg(), "cpu").load_state_dict(sd)


def test_train_step_rejects_wrong_clip_shape():
    state = build_state(tiny_cfg(), "cpu")
    with pytest.raises(ValueError, match=r"expected \(B, 5, 3, H, W\)"):
        train_step(state, squares(2, clip_len=4), squares(2)[:, 0])


def test_train_step_under_ddp_matches_plain(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    cfg, clips, donors = tiny_cfg(), squares(2), squares(2, seed=1)[:, 0]
    runs = []
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for wrap in (False, True):
            torch.manual_seed(0)
            state = build_state(cfg, "cpu")
            if wrap:
                for name in ("G", "D", "N", "arcface"):
                    setattr(state, name, DDP(getattr(state, name)))
            out = []
            for step in range(2):
                torch.manual_seed(10 + step)
                out.append(train_step(state, clips, donors, generator=torch.Generator().manual_seed(step)))
            runs.append((out, state.state_dict()))
    finally:
        dist.destroy_process_group()
    (plain, sd_plain), (ddp, sd_ddp) = runs
    for a, b in zip(plain, ddp):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert set(sd_ddp["G"]) == set(sd_plain["G"])  # saved without the "module." prefix
    assert all(torch.allclose(sd_plain["G"][k], sd_ddp["G"][k], atol=1e-6) for k in sd_plain["G"])


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_reconstruction_loss():
    # The full step (O, D, N, ArcFace, G) on one moving-square clip; a higher lr_g than the
    # paper's 2e-4 so that a width-8 G visibly learns within 200 steps (~30 s on one core).
    torch.manual_seed(0)
    state = build_state(tiny_cfg("model.width=8", "model.memory_dim=64", "train.lr_g=0.002"), "cpu")
    clips, g = squares(2), torch.Generator().manual_seed(0)
    rec = []
    for step in range(200):
        rec.append(train_step(state, clips, squares(2, seed=100 + step % 7)[:, 0], generator=g)["l_rec"])
    first, last = sum(rec[:20]) / 20, sum(rec[-20:]) / 20
    assert last < 0.6 * first, (first, last)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_train_step_with_amp_on_cuda(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    state = build_state(tiny_cfg("train.amp=true"), "cuda")
    state.amp_dtype = dtype
    state.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    before = {name: snapshot(getattr(state, name)) for name in ("G", "D", "N", "arcface")}
    clips, donors = squares(2).cuda(), squares(2, seed=1)[:, 0].cuda()
    for _ in range(3):  # fp16's scaler may skip a first step with overflowing gradients
        out = train_step(state, clips, donors, generator=torch.Generator("cuda").manual_seed(0))
    assert all(math.isfinite(v) for v in out.values())
    for name in ("G", "D", "N", "arcface"):
        assert changed(getattr(state, name), before[name]), f"{name} was not updated"
