"""One zxVAD training step: D, then N (+ ArcFace), then G, each with its own Adam.

``build_state(cfg, device)`` makes the networks, the L_RAA ArcFace weights, the augmentation g,
the three optimisers and the AMP scaler; ``train_step(state, clips, donors)`` runs one update and
returns every loss term in a :class:`StepLosses` mapping, read back as floats only when a value is
first looked at (one host sync per read, not per step). Pure torch: the Ray training loop may wrap G, D, N and
``arcface`` in DistributedDataParallel and the step works the same; ``state_dict`` always saves
the unwrapped modules, so checkpoints load with or without DDP.

Order within a step (one forward of G, reused three times):
    1. O makes the pseudo-anomalies v~ (no gradient; R is frozen).
    2. D is updated on v_{T+1} against the *detached* v^ (L_D).
    3. N and the ArcFace centres are updated on the detached v^, g(v^) and v~ (eq. 6).
    4. G is updated with L_G (eq. 1 and 6), whose adversarial terms use the freshly updated D
       and N; their weights are frozen for this forward so only G gets gradients.
Detaching v^ in 2-3 keeps the critics' losses from pushing G; updating the critics first gives
G the most recent opponents (the order of Liu et al.'s and pix2pix's public code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zxvad import losses
from zxvad.config import Config
from zxvad.ddp import unwrap
from zxvad.models import build_models
from zxvad.synthesis import scda_attention, synthesize

STATE_KEYS = ("G", "D", "N", "arcface", "opt_g", "opt_d", "opt_n", "scaler", "step",
              "backbone", "backbone_seed")


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Parameters of ``modules`` need no gradient inside the block (autograd records this)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class StepLosses(MutableMapping):
    """The terms of one step as 0-d tensors, turned into floats by one host sync on first read.

    Reading a value (``losses["l_g"]``, ``dict(losses)``, ``float(v)``) moves every term to the
    host at once; the training loop does that once per log interval, so the GPU never waits.
    """

    def __init__(self, terms: dict[str, Tensor]):
        self._tensors = terms
        self._floats: dict[str, float] | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The terms as detached 0-d tensors on the training device (no sync)."""
        return dict(self._tensors)

    def _read(self) -> dict[str, float]:
        if self._floats is None:
            values = torch.stack([v.detach().float().reshape(()) for v in self._tensors.values()])
            self._floats = dict(zip(self._tensors, values.tolist()))
        return self._floats

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __setitem__(self, key: str, value: float) -> None:
        self._read()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._floats if self._floats is not None else self._tensors)

    def __len__(self) -> int:
        return len(self._floats if self._floats is not None else self._tensors)

    def __repr__(self) -> str:
        return f"StepLosses({self._read()!r})"


@dataclass
class TrainState:
    """Everything a training run updates, and what its checkpoints hold."""

    G: nn.Module
    D: nn.Module
    N: nn.Module
    R: nn.Module  # frozen; rebuilt from (backbone, backbone_seed), never saved
    arcface: losses.ArcFace  # the head of L_RAA
    augment: nn.Module  # g of L_RAA
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_n: torch.optim.Optimizer  # N and the ArcFace centres
    scaler: torch.amp.GradScaler
    cfg: Config
    amp_dtype: torch.dtype | None = None  # None: full float32
    step: int = 0
    lap: Callable[[str], None] | None = None  # profiling hook: called at each section's end

    def section(self, name: str) -> None:
        """Tell the profiling hook (``zxvad.bench step``) that section ``name`` just ended."""
        if self.lap is not None:
            self.lap(name)

    def state_dict(self) -> dict:
        """G, D, N, ArcFace, the optimisers, the scaler, the step and R's (backbone, seed)."""
        return {"G": unwrap(self.G).state_dict(), "D": unwrap(self.D).state_dict(),
                "N": unwrap(self.N).state_dict(), "arcface": unwrap(self.arcface).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "opt_n": self.opt_n.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "backbone": self.cfg.model.backbone,
                "backbone_seed": self.cfg.model.backbone_seed}

    def load_state_dict(self, sd: dict) -> None:
        """Restore what :meth:`state_dict` saved; R must come from the same backbone and seed."""
        missing = [k for k in STATE_KEYS if k not in sd]
        if missing:
            raise ValueError(f"training state: missing {', '.join(missing)}")
        saved = (sd["backbone"], sd["backbone_seed"])
        if saved != (self.cfg.model.backbone, self.cfg.model.backbone_seed):
            raise ValueError(f"training state: R was {saved[0]} seed {saved[1]}, the config says "
                             f"{self.cfg.model.backbone} seed {self.cfg.model.backbone_seed}")
        for name in ("G", "D", "N", "arcface"):
            unwrap(getattr(self, name)).load_state_dict(sd[name])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.opt_n.load_state_dict(sd["opt_n"])
        self.scaler.load_state_dict(sd["scaler"])
        self.step = int(sd["step"])


def amp_dtype_for(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with loss scaling); None on the CPU or amp off."""
    if not cfg.train.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def attention_cells(N: nn.Module, image_size: int) -> int:
    """h' x w' of N's last features at ``image_size``: the ArcFace embedding size."""
    was_training = N.training
    N.eval()
    with torch.no_grad():
        _, features = N(torch.zeros(1, 3, image_size, image_size), return_features=True)
    N.train(was_training)
    return features.shape[-2] * features.shape[-1]


def fused_adam_for(cfg: Config, device: torch.device) -> bool:
    """Fused Adam (one kernel over all parameters; on the CPU ~9x faster than torch's default
    per-tensor loop, same update rule) where torch has it and ``train.fused_adam`` is on."""
    return cfg.train.fused_adam and device.type in ("cuda", "cpu")


def build_state(cfg: Config, device: torch.device | str) -> TrainState:
    """Networks, ArcFace, g, the Adam optimisers (lr_g, lr_d, lr_n) and the scaler on ``device``.

    ``train.channels_last`` stores G, D and N as NHWC (faster convolutions on tensor cores),
    ``train.compile`` compiles them in place (``nn.Module.compile``: state_dict keys, pickling
    and DDP wrapping stay as without), ``train.fused_adam`` fuses Adam.
    """
    device = torch.device(device)
    models = build_models(cfg.model)
    arcface = losses.ArcFace(attention_cells(models.N, cfg.model.image_size), cfg.loss.arcface_margin,
                             cfg.loss.arcface_scale, cfg.loss.raa_normalise)
    G, D, N, R = (m.to(device) for m in (models.G, models.D, models.N, models.R))
    arcface = arcface.to(device)
    for module in (G, D, N):
        if cfg.train.channels_last:
            module.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            module.compile()
    betas = (cfg.train.beta1, cfg.train.beta2)
    adam = dict(betas=betas, fused=True) if fused_adam_for(cfg, device) else dict(betas=betas)
    amp_dtype = amp_dtype_for(cfg, device)
    return TrainState(
        G=G, D=D, N=N, R=R, arcface=arcface, augment=losses.build_augmentation().to(device),
        opt_g=torch.optim.Adam(G.parameters(), lr=cfg.train.lr_g, **adam),
        opt_d=torch.optim.Adam(D.parameters(), lr=cfg.train.lr_d, **adam),
        opt_n=torch.optim.Adam([*N.parameters(), *arcface.parameters()], lr=cfg.train.lr_n, **adam),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        cfg=cfg, amp_dtype=amp_dtype)


def _update(state: TrainState, optimizer: torch.optim.Optimizer, loss: Tensor, section: str) -> None:
    optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.section(section)
    state.scaler.step(optimizer)
    state.section("optimizers")


def train_step(state: TrainState, clips: Tensor, donors: Tensor,
               generator: torch.Generator | None = None) -> StepLosses:
    """One update of D, N (+ ArcFace) and G; see the module docstring for the order.

    Args:
        state: from :func:`build_state`; G, D, N and ``arcface`` may be DDP-wrapped.
        clips: (B, T+1, 3, H, W) in [-1, 1]: G's inputs v_1..v_T and the target v_{T+1}.
        donors: (B, 3, H, W) in [-1, 1]: O's donor frames.
        generator: random source of O's frame choice and boxes (g uses the global RNG).

    Returns:
        Every term, read as a float on first access (:class:`StepLosses`): G's l_mse, l_ssim,
        l_gd, l_rec, l_mem, l_bb, l_g_adv_d, l_g_adv_n, l_g; D's l_d and mean patch outputs d_real,
        d_fake; N's l_n, l_rn, l_aa, l_raa, l_n_total, mean patch outputs n_normal, n_pseudo and
        O's mask_area. With ``loss.alpha_N == 0`` N is switched off (no
        synthesis, no N update, no N term in L_G) and its terms read 0.
    """
    T = state.cfg.model.T
    if clips.dim() != 5 or clips.shape[1] != T + 1 or clips.shape[2] != 3:
        raise ValueError(f"clips of shape {tuple(clips.shape)}: expected (B, {T + 1}, 3, H, W)")
    for module in (state.G, state.D, state.N, state.arcface):
        module.train()
    amp = dict(device_type=clips.device.type, dtype=state.amp_dtype,
               enabled=state.amp_dtype is not None)
    target = clips[:, T]

    state.section("start")
    with torch.autocast(**amp):
        out = state.G(clips[:, :T])
    state.section("g_forward")
    fake = out.prediction.detach().float()

    terms_d = _update_d(state, target, fake, amp)
    terms_n = _update_n(state, clips, donors, fake, amp, generator)
    terms_g = _update_g(state, out, target, clips[:, T - 1], amp)
    state.scaler.update()
    state.step += 1

    return StepLosses({k: v.detach() for k, v in {**terms_g, **terms_d, **terms_n}.items()})


def _update_d(state: TrainState, target: Tensor, fake: Tensor, amp: dict) -> dict[str, Tensor]:
    """L_D: real v_{T+1} against the detached v^, in one forward (one DDP call, shared BN batch)."""
    with torch.autocast(**amp):
        d_logits = state.D(torch.cat([target, fake]))
    d_real, d_fake = d_logits.float().split(target.shape[0])
    l_d = losses.discriminator_loss(d_real, d_fake)
    _update(state, state.opt_d, l_d, "d")
    return {"l_d": l_d, "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}


def normalcy_pair(cfg: Config, clips: Tensor, donors: Tensor, fake: Tensor, R: nn.Module,
                  generator: torch.Generator | None = None):
    """N's normal frames and O's pseudo-anomalies under ``loss.normalcy_pair``.

    literal (the paper): v^ against a donor object pasted on a real input frame v_1..v_T;
    real: the real v_{T+1} against the same; prediction: v^ against a paste on v^ itself. In the
    last two the classes differ only by the pasted object (beyond the paper's letter).
    """
    options = dict(threshold=cfg.model.mask_threshold, generator=generator,
                   spread=cfg.model.mask_spread)
    if cfg.loss.normalcy_pair == "prediction":
        syn = synthesize(torch.stack([fake, fake], dim=1), donors, R, T=1, **options)
        return fake, syn
    syn = synthesize(clips, donors, R, T=cfg.model.T, **options)
    return (clips[:, cfg.model.T] if cfg.loss.normalcy_pair == "real" else fake), syn


def _update_n(state: TrainState, clips: Tensor, donors: Tensor, fake: Tensor, amp: dict,
              generator: torch.Generator | None) -> dict[str, Tensor]:
    """Eq. (6) for N and ArcFace on v^ (normal), g(v^) (augmented normal) and v~ (pseudo-anomaly),
    one forward; every term reads 0 when ``loss.alpha_N == 0`` switches N off."""
    cfg, batch = state.cfg, clips.shape[0]
    if cfg.loss.alpha_N <= 0:
        zero = clips.new_zeros((), dtype=torch.float32)
        return dict.fromkeys(("l_n", "l_rn", "l_aa", "l_raa", "l_n_total", "n_normal", "n_pseudo",
                              "mask_area"), zero)
    with torch.no_grad():
        normal, syn = normalcy_pair(cfg, clips, donors, fake, state.R, generator)
        state.section("o")
        augmented = state.augment((normal + 1) / 2) * 2 - 1
        state.section("augment")
    with torch.autocast(**amp):
        n_logits, features = state.N(torch.cat([normal, augmented, syn.frames.float()]),
                                     return_features=True)
    n_normal, _, n_pseudo = n_logits.float().split(batch)
    att_normal, att_augmented, att_pseudo = scda_attention(
        features.float(), cfg.loss.attention_scale).split(batch)
    terms = losses.normalcy_objective(n_normal, n_pseudo, att_normal, att_augmented, att_pseudo,
                                      syn.mask, state.arcface, cfg.loss)
    _update(state, state.opt_n, terms["l_n_total"], "n")
    return {**terms, "n_normal": n_normal.detach().mean(), "n_pseudo": n_pseudo.detach().mean(),
            "mask_area": syn.object_mask.mean()}


def _update_g(state: TrainState, out, target: Tensor, last: Tensor, amp: dict
              ) -> dict[str, Tensor]:
    """Eq. (1) with the just-updated D and N; their weights frozen, their DDP wrappers bypassed
    (only G's gradients need syncing)."""
    D, N = unwrap(state.D), unwrap(state.N)
    pred = out.prediction
    with frozen(D, N), torch.autocast(**amp):
        d_pred = D(pred)
        n_pred = N(pred) if state.cfg.loss.alpha_N > 0 else None
    terms = losses.generator_objective(pred, target, out.memory_weights, d_pred, n_pred,
                                       state.cfg.loss, last=last)
    _update(state, state.opt_g, terms["l_g"], "g_backward")
    return terms
