"""``python -m zxvad.bench {model,synthesis,loader,codec,baselines,masks,method,step,scale,curve,lab} ...``: one module per benchmark.

Each benchmark module defines ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is
printed last as one JSON line.
"""

import argparse
import importlib
import json
import sys

BENCHMARKS = {
    "model": "G's parameters, GMACs and checkpoint MB at a preset's size",
    "synthesis": "batched pseudo-anomaly synthesis O against a per-sample loop",
    "loader": "training loaders before and after decoding only what a batch uses (clips/s, frames decoded)",
    "codec": "bytes, speed and fidelity of each codec/quality, read back through DALI",
    "baselines": "the trivial predictors' AUC on labelled test shards under every protocol",
    "masks": "how well O's object masks cover the moving objects of a fixed-camera clip",
    "method": "a few hundred training steps on real clips: critics, memory, loss balance",
    "step": "one train_step: time, its split by section, memory, FLOPs and TFLOP/s",
    "scale": "a Jester-layout corpus of 1k-20k videos: build linearity, memory, loader, fractions",
    "curve": "one run's gain over the trivial baselines against training minutes (from MLflow)",
    "lab": "train on ped2-dev or the real TI clips in one process, score ped2-dev's test videos",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zxvad.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True)
    for name, text in BENCHMARKS.items():
        module = importlib.import_module(f"zxvad.bench.{name}")
        module.add_arguments(sub.add_parser(name, help=text, description=text))
    args = parser.parse_args(argv)
    try:
        figures = importlib.import_module(f"zxvad.bench.{args.name}").run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # TrackingError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
