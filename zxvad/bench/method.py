"""Does the method core behave? A few hundred train_step calls on real clips, then three checks.

    python -m zxvad.bench method [--config demo] [--set key=value ...] [--steps 300] [--threads 1]

G's clips are windows of T+1 consecutive frames of the fixed-camera clip
street_pedestrians_vtest.avi; O's donors are frames of the other real clips. After training:
- critics: N and D score the same predicted frames inside their own mixed batch and alone, as
  in G's update (train mode); the gap between the two is what G's α_D and α_N terms chase;
- memory: the largest weight per position and how many of the K items are kept (> 0);
- losses: every term's mean over the last 50 steps (is any one term dominating N's objective?);
- the label-free diagnostics of :mod:`zxvad.bench.diagnostics` (what N learned, what G does)
  on a fresh batch of the same clip.
Run it twice, e.g. with ``--set model.critic_norm=batch ...`` for the literal setting.
"""

from __future__ import annotations

from pathlib import Path

REAL_CLIPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-clips"


def add_arguments(parser) -> None:
    from zxvad import config

    config.add_arguments(parser)
    parser.add_argument("--steps", type=int, default=300, help="train_step calls (default 300)")
    parser.add_argument("--clips", default=str(REAL_CLIPS), help="folder of the real clips")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    import torch

    from zxvad import config
    from zxvad.bench.masks import read_frames
    from zxvad.step import build_state, train_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = config.load(args.config, args.overrides)
    S, T, B = cfg.model.image_size, cfg.model.T, cfg.train.batch_size
    folder = Path(args.clips)
    video = read_frames(str(folder / "street_pedestrians_vtest.avi"), 300, S) * 2 - 1
    donor_pool = torch.cat([read_frames(str(p), 40, S)[::8] for p in sorted(folder.iterdir())
                            if p.suffix in (".mp4", ".avi") and "vtest" not in p.name]) * 2 - 1
    state = build_state(cfg, "cpu")
    g = torch.Generator().manual_seed(args.seed)
    history = []
    for _ in range(args.steps):
        start = torch.randint(0, len(video) - T, (B,), generator=g)
        clips = torch.stack([video[s:s + T + 1] for s in start.tolist()])
        donors = donor_pool[torch.randint(0, len(donor_pool), (B,), generator=g)]
        history.append(train_step(state, clips, donors, generator=g))
    tail = history[-50:]
    means = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0]}

    start = torch.randint(0, len(video) - T, (B,), generator=g)
    clips = torch.stack([video[s:s + T + 1] for s in start.tolist()])
    with torch.no_grad():
        for module in (state.G, state.D, state.N):
            module.train()  # as in train_step
        out = state.G(clips[:, :T])
        pred = out.prediction
        from zxvad.synthesis import synthesize

        syn = synthesize(clips, donor_pool[:B], state.R, cfg.model.mask_threshold, generator=g,
                         T=T, spread=cfg.model.mask_spread)
        augmented = state.augment((pred + 1) / 2) * 2 - 1
        n_mixed = state.N(torch.cat([pred, augmented, syn.frames]))[:B].mean().item()
        n_alone = state.N(pred).mean().item()
        d_mixed = state.D(torch.cat([clips[:, T], pred]))[B:].mean().item()
        d_alone = state.D(pred).mean().item()
        w = out.memory_weights.flatten(2).transpose(1, 2).reshape(-1, out.memory_weights.shape[1])
    from zxvad.bench.diagnostics import diagnostics

    found = diagnostics(state, clips, donor_pool[:B], cfg)
    figures = {
        "benchmark": "method", "config": args.config, "overrides": args.overrides,
        "steps": args.steps,
        "n_normal_in_mixed_batch": n_mixed, "n_normal_alone": n_alone,
        "d_fake_in_mixed_batch": d_mixed, "d_fake_alone": d_alone,
        "memory_max_weight": w.max(dim=1).values.mean().item(),
        "memory_kept_items": (w > 0).float().sum(dim=1).mean().item(),
        "memory_items": w.shape[1],
        "memory_items_used": int(w.argmax(dim=1).unique().numel()),  # distinct winners: collapse?
        "losses_last_50": {k: round(v, 4) for k, v in means.items()},
        "diagnostics": {k: round(v, 5) for k, v in found.items()},
    }
    print(f"N(v^): {n_mixed:.3f} in its mixed batch, {n_alone:.3f} alone (G's update); "
          f"D(v^): {d_mixed:.3f} / {d_alone:.3f}")
    print(f"memory: largest weight {figures['memory_max_weight']:.4f}, "
          f"{figures['memory_kept_items']:.1f} of {w.shape[1]} items kept per position, "
          f"{figures['memory_items_used']} distinct winning items")
    print("diagnostics: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
    print("losses (mean of the last 50 steps): "
          + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return figures
