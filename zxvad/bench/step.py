"""One training step against the physical limit: time, its split, memory, FLOPs and TFLOP/s.

    python -m zxvad.bench step --config paper --size 64 --batch 8 --threads 2
    python -m zxvad.bench step --config paper --device cuda --batch 8 [--compile]

Times ``zxvad.step.train_step`` on synthetic clips (the step's cost does not depend on the
pixels) after warm-up steps, best of ``--repeats`` runs of ``--steps`` steps, and splits each
step into sections through the step's profiling hook: G's forward, D (forward, loss, backward),
O (R's forward, mask and paste), the augmentation g, N (+ArcFace), G's loss and backward (with
D and N on v^) and the three optimiser steps. CUDA events time the sections on a GPU,
``time.perf_counter`` on the CPU. The model FLOPs of one step are counted once with
``torch.utils.flop_counter`` (convolutions and matrix products, forward and backward, R
included); on a GPU the achieved TFLOP/s is set against the device's dense bf16 peak.

On the CPU the figure to beat is an independent reproduction of the paper measured on this
project's 2-core machine (batch 8, T = 4, paper widths, 2 threads): 1.91 s per step at 64x64 and
8.13 s at 128x128 (``REFERENCE_CPU_S``).
"""

from __future__ import annotations

import resource
import sys
import time

REFERENCE_CPU_S = {64: 1.91, 128: 8.13}  # s/step, batch 8, T=4, paper widths, 2 threads
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10G": 125.0, "A10": 125.0}  # dense, no sparsity
SECTIONS = ("g_forward", "d", "o", "augment", "n", "g_backward", "optimizers")


def add_arguments(parser) -> None:
    from zxvad import config

    config.add_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch", type=int, default=0, help="clips per step (default train.batch_size)")
    parser.add_argument("--size", type=int, default=0, help="frame side (default model.image_size)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts (default 3)")
    parser.add_argument("--compile", action="store_true", help="set train.compile=true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def peak_tflops(device) -> float | None:
    """Dense bf16 peak of a known GPU by name; None for the CPU or an unknown device."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "A10G" before "A10"
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


class SectionTimer:
    """The step's profiling hook: the time since the previous call is charged to ``name``."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def __call__(self, name: str) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def collect(self) -> dict[str, float]:
        """Seconds per section since the last collect (a "start" mark opens each step)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        for (_, before), (name, after) in zip(self.marks, self.marks[1:]):
            if name == "start":
                continue
            seconds = before.elapsed_time(after) / 1000 if self.cuda else after - before
            totals[name] = totals.get(name, 0.0) + seconds
        self.marks.clear()
        return totals


def synthetic_batch(batch: int, T: int, size: int, device, seed: int):
    """Clips (B, T+1, 3, S, S) and donors (B, 3, S, S) in [-1, 1]: smooth blobs and a square."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    clips = F.interpolate(torch.rand(batch * (T + 1), 3, 8, 8, generator=g), size=(size, size),
                          mode="bilinear", align_corners=False).view(batch, T + 1, 3, size, size)
    donors = F.interpolate(torch.rand(batch, 3, 8, 8, generator=g), size=(size, size), mode="bilinear",
                           align_corners=False)
    side = size // 4
    donors[:, :, side:2 * side, side:2 * side] = torch.rand(batch, 3, side, side, generator=g)
    return (clips * 2 - 1).to(device), (donors * 2 - 1).to(device)


def step_flops(state, clips, donors, generator) -> float:
    """FLOPs of one train_step (convolutions and matmuls, forward and backward), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    from zxvad.step import train_step

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(state, clips, donors, generator=generator)
    return float(counter.get_total_flops())


def measure(cfg, device, batch: int, steps: int, warmup: int, repeats: int, seed: int = 0,
            progress=None) -> dict:
    """Build the state, warm up, time ``repeats`` x ``steps`` steps; the best repeat counts."""
    import torch

    from zxvad.step import build_state, train_step

    device = torch.device(device)
    torch.manual_seed(seed)
    state = build_state(cfg, device)
    clips, donors = synthetic_batch(batch, cfg.model.T, cfg.model.image_size, device, seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup):
        dict(train_step(state, clips, donors, generator=generator))
    sync()
    warmup_s = time.perf_counter() - start
    timer = SectionTimer(device)
    state.lap = timer
    best, best_sections, losses = float("inf"), {}, {}
    for _ in range(repeats):
        timer.collect()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            out = train_step(state, clips, donors, generator=generator)
        sync()
        seconds = (time.perf_counter() - start) / steps
        sections = {k: v / steps for k, v in timer.collect().items()}
        losses = dict(out)
        if seconds < best:
            best, best_sections = seconds, sections
        if progress:
            progress(seconds)
    state.lap = None
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    flops = step_flops(state, clips, donors, generator)
    return {"step_s": best, "sections_s": best_sections, "warmup_s": warmup_s,
            "peak_memory_mb": peak_mb, "flops_per_step": flops, "losses": losses}


def run(args) -> dict:
    import torch

    from zxvad import config

    overrides = list(args.overrides)
    if args.size:
        overrides.append(f"model.image_size={args.size}")
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.compile:
        overrides.append("train.compile=true")
    cfg = config.load(args.config, overrides)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, size = cfg.train.batch_size, cfg.model.image_size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"train_step on {where}: batch {batch}, {size}x{size}, T={cfg.model.T}, "
          f"width {cfg.model.width}, amp {cfg.train.amp}, channels_last {cfg.train.channels_last}, "
          f"compile {cfg.train.compile}; best of {args.repeats} x {args.steps} steps "
          f"after {args.warmup} warm-up", file=sys.stderr)
    result = measure(cfg, device, batch, args.steps, args.warmup, args.repeats, args.seed,
                     progress=lambda s: print(f"  repeat: {s:.3f} s/step", file=sys.stderr))
    step_s = result["step_s"]
    achieved = result["flops_per_step"] / step_s / 1e12
    peak = peak_tflops(device)
    figures = {
        "device": where, "batch": batch, "size": size, "amp": cfg.train.amp,
        "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "step_s": round(step_s, 4), "samples_per_s": round(batch / step_s, 2),
        "sections_s": {k: round(result["sections_s"].get(k, 0.0), 4) for k in SECTIONS},
        "warmup_s": round(result["warmup_s"], 2),
        "peak_memory_mb": round(result["peak_memory_mb"], 1),
        "gflops_per_sample": round(result["flops_per_step"] / batch / 1e9, 2),
        "achieved_tflops": round(achieved, 3),
        "peak_bf16_tflops": peak,
        "share_of_peak": round(achieved / peak, 4) if peak else None,
    }
    reference = REFERENCE_CPU_S.get(size)
    if device.type == "cpu" and reference and batch == 8 and cfg.model.width == 64:
        figures["reference_s"] = reference
        figures["speedup_vs_reference"] = round(reference / step_s, 2)
    total = sum(figures["sections_s"].values()) or 1.0
    print(f"  {step_s:.3f} s/step, {figures['samples_per_s']:.1f} samples/s, "
          f"peak memory {figures['peak_memory_mb']:.0f} MB", file=sys.stderr)
    for name, seconds in figures["sections_s"].items():
        print(f"    {name:<11} {seconds:8.4f} s  {100 * seconds / total:5.1f} %", file=sys.stderr)
    print(f"  {figures['gflops_per_sample']:.1f} GFLOP per sample, {achieved:.3f} TFLOP/s achieved"
          + (f", {100 * figures['share_of_peak']:.1f} % of the {peak:.0f} TFLOP/s bf16 peak"
             if peak else ""), file=sys.stderr)
    if "reference_s" in figures:
        print(f"  reference reproduction: {reference:.2f} s/step -> "
              f"{figures['speedup_vs_reference']:.2f}x", file=sys.stderr)
    return figures
