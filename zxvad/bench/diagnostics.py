"""Label-free diagnostics of the method on one batch of training windows.

What N has learned, and what it teaches G (no anomaly label is used):
- ``n_gap_generated_real`` = mean N(v^) - N(v_{T+1}): does N tell G's frames from real ones?
- ``n_gap_real_pasted`` = mean N(v_{T+1}) - N(v_{T+1} with a pasted object): does N see the paste?
  The method wants the second gap large and the first near 0; N trained on the paper's literal
  pair learns the first one, the easy one (generated vs real).
- ``n_k_slope``: slope over k = 0, 1, 2, 4 of mean N(v_T + k (v^ - v_T)). Positive: N rewards G
  for moving *away* from the last real frame along its own change, so G's alpha_N term pushes G
  to exaggerate (noise of the same size would not move N).
What G does:
- ``g_static_rms``: rms of G's change v^ - v_T on the pixels that do not move (|v_{T+1} - v_T|
  below ``loss.static_threshold``): repainting the static background is error;
- ``g_beats_copy_last``: the share of frames where G's MSE is below copy_last's.
"""

from __future__ import annotations

import torch
from torch import Tensor

K_STEPS = (0.0, 1.0, 2.0, 4.0)


@torch.no_grad()
def diagnostics(state, clips: Tensor, donors: Tensor, cfg) -> dict[str, float]:
    """The figures above for ``state`` (from :func:`zxvad.step.build_state`) on one batch."""
    from zxvad.ddp import unwrap
    from zxvad.synthesis import synthesize

    T = cfg.model.T
    G, N = unwrap(state.G), unwrap(state.N)
    g_mode, n_mode = G.training, N.training
    G.eval()
    N.train()  # N is only ever run in train mode by the step
    try:
        last, target = clips[:, T - 1], clips[:, T]
        pred = G(clips[:, :T]).prediction.float()
        pasted = synthesize(torch.stack([target, target], dim=1), donors, state.R,
                            threshold=cfg.model.mask_threshold, T=1,
                            generator=torch.Generator(device=clips.device).manual_seed(0),
                            spread=cfg.model.mask_spread).frames.float()
        batch = clips.shape[0]
        n_pred, n_real, n_pasted = N(torch.cat([pred, target, pasted])).float().split(batch)
        ks = torch.tensor(K_STEPS)
        curve = torch.stack([N(last + k * (pred - last)).float().mean() for k in K_STEPS]).cpu()
        slope = float(((ks - ks.mean()) * (curve - curve.mean())).sum() / (ks - ks.mean()).pow(2).sum())
    finally:
        G.train(g_mode)
        N.train(n_mode)
    static = ((target - last).abs().amax(dim=1, keepdim=True) < 2 * cfg.loss.static_threshold)
    change = (pred - last).pow(2).mean(dim=1, keepdim=True)
    static_rms = (change[static.expand_as(change)].mean().sqrt() / 2) if static.any() else pred.new_zeros(())
    mse_g = (pred - target).pow(2).flatten(1).mean(1)
    mse_copy = (last - target).pow(2).flatten(1).mean(1)
    return {
        "n_gap_generated_real": float(n_pred.mean() - n_real.mean()),
        "n_gap_real_pasted": float(n_real.mean() - n_pasted.mean()),
        "n_k_slope": slope,
        "g_static_rms": float(static_rms),  # on [0, 1]
        "g_beats_copy_last": float((mse_g < mse_copy).float().mean()),
    }
