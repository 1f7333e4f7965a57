"""G's size at a preset: parameters, GMACs of one sample and checkpoint MB (paper Table 3).

    python -m zxvad.bench model --config paper

The paper reports 8.73M parameters, 43.10 GMACs and 34.92 MB (decimal megabytes: 8.73M float32
weights x 4 bytes) for G at 256x256 with T = 4.
"""

from __future__ import annotations

PAPER = {"params": 8.73e6, "gmacs": 43.10, "mb": 34.92}


def add_arguments(parser) -> None:
    from zxvad import config

    config.add_arguments(parser)


def run(args) -> dict:
    import os
    import tempfile

    import torch

    from zxvad import config
    from zxvad.models import build_generator, count_parameters, generator_gmacs

    cfg = config.load(args.config, args.overrides)
    m = cfg.model
    G = build_generator(m)
    params = count_parameters(G)
    gmacs = generator_gmacs(G, m.image_size, m.T)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "G.pt")
        torch.save(G.state_dict(), path)
        mb = os.path.getsize(path) / 1e6
    print(f"G at {m.image_size}x{m.image_size}, T={m.T}, width={m.width}, "
          f"memory {m.memory_items}x{m.memory_dim} (config {args.config})")
    paper_size = (m.image_size, m.T, m.width, m.memory_items) == (256, 4, 64, 2000)
    figures = {"params": params, "gmacs": round(gmacs, 3), "mb": round(mb, 3)}
    for key, label in [("params", "parameters"), ("gmacs", "GMACs (one sample)"),
                       ("mb", "checkpoint MB")]:
        value = figures[key]
        shown = f"{value / 1e6:.3f}M" if key == "params" else f"{value:.2f}"
        goal = PAPER[key]
        paper = f"{goal / 1e6:.2f}M" if key == "params" else f"{goal:.2f}"
        line = f"  {label:<20} {shown:>10}   paper {paper:>8}"
        if paper_size:  # the paper rounds to 2 decimals
            line += "  (within)" if value <= goal * 1.001 else "  (ABOVE the paper's figure)"
        print(line)
    return figures
