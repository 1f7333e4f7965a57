"""Method work on real anomalies in one process: train with the project's own step, score Ped2.

    python -m zxvad.bench lab --source ped2 [--config method] [--set key=value ...]
        [--steps 3000] [--eval-every 500] [--minutes 30] [--seed 0] [--out lab-out/run.json]

Pure torch (no DALI, Ray or MLflow), so it runs the same on a laptop, a CPU node and a GPU:
frames are decoded once and packed as uint8 arrays (cached in ``--cache``), G, D, N and O are
built by :func:`zxvad.step.build_state` and trained by :func:`zxvad.step.train_step`, and every
``--eval-every`` steps G scores every scorable frame of the target's test videos beside the
trivial baselines, under every protocol of :data:`zxvad.scoring.PROTOCOLS`.

Sources of G's clips and O's donors:
- ``ped2``: ped2-dev's 16 normal training videos (in-domain: the sanity check of G);
- ``ti``: the real task-irrelevant clips of ``../shared/data/real-clips`` (zero-shot);
  windows holding a repeated frame or a scene cut are dropped (``--no-clean`` keeps them).
The target is always ped2-dev's 12 test videos. Results: one JSON (every evaluation, the
label-free diagnostics of :mod:`zxvad.bench.diagnostics`) and a PNG of gain against minutes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PED2 = Path(os.environ.get("ZXVAD_PED2", SHARED / "ped2-dev"))
REAL_CLIPS = Path(os.environ.get("ZXVAD_REAL_CLIPS", SHARED / "real-clips"))
SOURCES = ("ped2", "ti")
RELATIVE = "G_minus_copy_last"


def add_arguments(parser) -> None:
    from zxvad import config

    config.add_arguments(parser)
    parser.set_defaults(config="method")
    parser.add_argument("--source", choices=SOURCES, default="ped2",
                        help="G's clips and O's donors: ped2 (in-domain) or ti (real clips, zero-shot)")
    parser.add_argument("--steps", type=int, default=None, help="train_step calls (default train.steps)")
    parser.add_argument("--eval-every", type=int, default=500, help="evaluate every N steps (and at the end)")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="stop training after this many wall minutes, then evaluate (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (weights, windows, boxes)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--initial-eval", action="store_true",
                        help="also evaluate before the first step (a residual G is copy_last there)")
    parser.add_argument("--no-clean", action="store_true", help="keep TI windows with duplicates or cuts")
    parser.add_argument("--ped2", default=str(PED2), help="ped2-dev folder (frames + ped2.mat)")
    parser.add_argument("--clips", default=str(REAL_CLIPS), help="folder of the real TI clips")
    parser.add_argument("--cache", default="lab-out/cache", help="packed frames are kept here")
    parser.add_argument("--out", default="lab-out/run.json", help="results JSON; the curve PNG beside it")
    parser.add_argument("--patch", type=int, default=0, metavar="PIXELS",
                        help="also score every predictor by its worst PIXELS-square tile (beyond the paper)")
    parser.add_argument("--rescore", default=None, metavar="PT",
                        help="no training: load G's weights saved by --save and evaluate them (with --patch)")
    parser.add_argument("--save", action="store_true",
                        help="also save G's weights beside --out (.pt), to rescore without retraining")
    parser.add_argument("--at-step", type=int, default=None, metavar="N",
                        help="with --summarise: read every run at its evaluation of step N, not its last")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="with --summarise: draw each group's gain against steps, mean +- std over seeds")
    parser.add_argument("--mlflow", default=None, metavar="EXPERIMENT",
                        help="also log the result(s) to this MLflow experiment, one run per result "
                             "(compare them with python -m tune.compare --per-target)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--summarise", nargs="+", metavar="JSON", default=None,
                        help="train nothing: print mean +- std over the given result files, one row "
                             "per (source, overrides), for G, each baseline and the gain")


# ------------------------------------------------------------------------------- packed frames


def _resize(image, size: int):
    import numpy as np

    # Pillow's default filter, as in ped2-dev's SOURCES.md baseline table
    return np.asarray(image.convert("RGB").resize((size, size)), dtype=np.uint8)


def _decode(video, size: int):
    """One shards.readers.Video as (N, size, size, 3) uint8."""
    import numpy as np
    from PIL import Image

    if isinstance(video.source, (str, Path)):
        import av

        with av.open(str(video.source)) as container:
            frames = [_resize(f.to_image(), size) for f in container.decode(video=0)]
    else:
        frames = []
        for path in video.source:
            with Image.open(path) as image:
                frames.append(_resize(image, size))
    return np.stack(frames)


def packed(dataset: str, root: Path, split: str, size: int, cache: Path) -> list[dict]:
    """Every video of a split as ``{"id", "frames" (N,S,S,3) uint8, "labels" or None}``, cached."""
    import numpy as np

    from shards import readers

    path = cache / f"{dataset}-{split}-{size}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            ids = [str(i) for i in z["ids"]]
            return [{"id": i, "frames": z[f"f{k}"],
                     "labels": z[f"l{k}"] if f"l{k}" in z else None} for k, i in enumerate(ids)]
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{dataset}: no folder {root}")
    videos = readers.list_videos(dataset, root, split)
    out = []
    for k, v in enumerate(videos):
        print(f"packing {dataset} {split} {k + 1}/{len(videos)}: {v.video_id}", flush=True)
        out.append({"id": v.video_id, "frames": _decode(v, size), "labels": v.labels})
    arrays = {"ids": np.array([v["id"] for v in out])}
    for k, v in enumerate(out):
        arrays[f"f{k}"] = v["frames"]
        if v["labels"] is not None:
            arrays[f"l{k}"] = np.asarray(v["labels"], dtype=np.uint8)
    cache.mkdir(parents=True, exist_ok=True)
    from shards.storage import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return out


def window_index(videos: list[dict], window: int, clean: bool) -> tuple[list[tuple[int, int]], dict]:
    """(video, start) of every training window; with ``clean`` only windows free of repeated
    frames and cuts (:func:`shards.windows.clean_starts`). Also how many each rule dropped."""
    import numpy as np

    from shards.windows import clean_starts, transition_psnr

    index, total = [], 0
    for k, v in enumerate(videos):
        n = len(v["frames"]) - window + 1
        total += max(n, 0)
        keep = clean_starts(transition_psnr(v["frames"]), window) if clean else np.ones(max(n, 0), bool)
        index += [(k, int(s)) for s in np.flatnonzero(keep)]
    return index, {"windows": total, "kept": len(index)}


# ------------------------------------------------------------------------------- evaluation


# What evaluate(detail=True) adds beside the predictors' figures (per video, by kind of pair)
DETAIL_KEYS = ("per_video", "mixed_videos", "pairs", "median_minmax_score")


def evaluate(G, videos: list[dict], T: int, device, batch: int = 32, patch: int = 0,
             detail: bool = False) -> dict:
    """G and each trivial baseline under every protocol, on every scorable frame of ``videos``.

    ``patch`` > 0 also scores every predictor by its worst ``patch`` x ``patch`` tile (beyond the
    paper, :func:`zxvad.scoring.patch_psnr`: "<name>_patch"), with ``gain_patch`` = G's tile
    score minus the best baseline under either score, so a win is a win over every trivial
    predictor. ``detail`` adds each predictor's AUC per video ("per_video") and its papers' AUC
    over the videos that hold both classes ("mixed_videos": Ped2's 08-11 are abnormal in every
    frame, and per-video min-max stretches their scores over the whole range)."""
    import numpy as np
    import torch

    from zxvad import scoring

    was_training = G.training
    G.eval()
    names = ["G", *scoring.BASELINES]
    psnrs: dict[str, list] = {n + suffix: [] for n in names for suffix in ("", "_patch")[:1 + (patch > 0)]}
    with torch.no_grad():
        for v in videos:
            frames = torch.from_numpy(v["frames"]).permute(0, 3, 1, 2)
            per = {name: [] for name in psnrs}
            for a in range(0, len(frames) - T, batch):
                starts = range(a, min(a + batch, len(frames) - T))
                clips = torch.stack([frames[s:s + T + 1] for s in starts]).to(device)
                clips = clips.float() / 127.5 - 1
                inputs, target = clips[:, :T], clips[:, T]
                predictions = {"G": G(inputs).prediction, **scoring.baseline_predictions(inputs)}
                for name, pred in predictions.items():
                    per[name] += scoring.psnr(pred, target).cpu().tolist()
                    if patch:
                        per[name + "_patch"] += scoring.patch_psnr(pred, target, patch).cpu().tolist()
            for name, values in per.items():
                psnrs[name].append(scoring.VideoResult(v["id"], np.array(values), v["labels"]))
    G.train(was_training)
    # beyond the paper: G's PSNR minus copy_last's on the same frame, a score of what G learned
    # about motion that repeating the last frame cannot know; printed beside the paper's score
    psnrs[RELATIVE] = [scoring.VideoResult(g.video_id, g.psnr - c.psnr, g.labels)
                       for g, c in zip(psnrs["G"], psnrs["copy_last"])]
    figures = {name: scoring.all_protocols(results, T) for name, results in psnrs.items()}
    for key, name in (("gain", "G"), ("gain_relative", RELATIVE)):
        figures[key] = {p: figures[name][p] - max(figures[b][p] for b in scoring.BASELINES)
                        for p in scoring.PROTOCOLS}
    if detail:
        figures["per_video"] = {name: {r.video_id: scoring.protocol_auc([r], T, "macro") for r in results}
                                for name, results in psnrs.items()}
        figures["mixed_videos"] = {name: scoring.protocol_auc(
            [r for r in results if len(set(np.asarray(r.labels)[T:].tolist())) == 2], T, "micro_minmax")
            for name, results in psnrs.items()}
        figures["pairs"] = {name: scoring.pair_decomposition(results, T) for name, results in psnrs.items()}
        # where a video's frames sit between its own extremes (median of the min-max score)
        figures["median_minmax_score"] = {name: {r.video_id: float(np.median(scoring.normalize_scores(r.psnr)))
                                                 for r in results} for name, results in psnrs.items()}
    if patch:
        rivals = [*scoring.BASELINES, *(b + "_patch" for b in scoring.BASELINES)]
        figures["gain_patch"] = {p: figures["G_patch"][p] - max(figures[b][p] for b in rivals)
                                 for p in scoring.PROTOCOLS}
    return figures


def _line(step: int, minutes: float, fig: dict) -> str:
    from zxvad import scoring

    cells = [f"{p} G {100 * fig['G'][p]:.2f} ({100 * fig['gain'][p]:+.2f}; relative "
             f"{100 * fig['gain_relative'][p]:+.2f})" for p in scoring.PROTOCOLS]
    return f"step {step:>5} {minutes:6.1f} min  " + "  ".join(cells)


# ------------------------------------------------------------------------------- the run


def at_step(result: dict, step: int | None) -> dict:
    """``result`` with its evaluation at ``step`` as the final one (None: left as it is), so that
    runs of one length can be read beside a longer run's curve at the same step."""
    if step is None:
        return result
    found = [e for e in result["evaluations"] if e["step"] == step]
    if not found:
        raise ValueError(f"no evaluation at step {step} in the {result['source']} run of seed "
                         f"{result['seed']} (steps: {', '.join(str(e['step']) for e in result['evaluations'])})")
    return {**result, "final": found[0], "steps": step,
            "evaluations": [e for e in result["evaluations"] if e["step"] <= step]}


def curve_points(results: list[dict], protocol: str) -> tuple[list[int], np.ndarray]:
    """The steps every run evaluated, and each run's gain (points) there under ``protocol``. Runs
    that ``--minutes`` stopped at different steps add one more point: each run's final evaluation,
    drawn at the mean of their final steps."""
    import numpy as np

    steps = sorted(set.intersection(*({e["step"] for e in r["evaluations"]} for r in results)))
    evals = [[next(e for e in r["evaluations"] if e["step"] == s) for s in steps] for r in results]
    finals = [r["evaluations"][-1] for r in results]
    if not steps or any(f["step"] > steps[-1] for f in finals):
        steps.append(round(float(np.mean([f["step"] for f in finals]))))
        evals = [run + [final] for run, final in zip(evals, finals)]
    return steps, np.array([[100 * e["gain"][protocol] for e in run] for run in evals])


def summarise(paths: list[str], step: int | None = None, plot: str | None = None) -> dict:
    """Mean and std over seeds of the final evaluation (or the one at ``step``) of lab result
    files, grouped by (source, overrides); one table per protocol, printed and returned.
    ``plot``: a PNG of each group's gain against steps (``curve_points``), mean ± std over seeds,
    one panel per protocol."""
    import numpy as np

    from zxvad import scoring

    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        result = at_step(json.loads(Path(path).read_text()), step)
        key = (result["source"], " ".join(result["overrides"]) or "(preset)")
        groups.setdefault(key, []).append(result)
    out = {}
    for p in scoring.PROTOCOLS:
        print(f"\n{scoring.PROTOCOL_TITLES[p]}; AUC %, mean +- std over seeds")
        print(f"{'source':<6} {'config':<28} {'seeds':>5} {'steps':>6} {'G':>14} {'copy_last':>9} "
              f"{'mean_T':>7} {'linear':>7} {'gain':>14}")
        for (source, overrides), results in groups.items():
            g = np.array([100 * r["final"]["G"][p] for r in results])
            gain = np.array([100 * r["final"]["gain"][p] for r in results])
            ddof = 1 if len(results) > 1 else 0
            base = {b: np.mean([100 * r["final"][b][p] for r in results]) for b in scoring.BASELINES}
            steps = int(np.mean([r["steps"] for r in results]))
            print(f"{source:<6} {overrides:<28} {len(results):>5} {steps:>6} "
                  f"{g.mean():8.2f} +-{g.std(ddof=ddof):4.2f} {base['copy_last']:9.2f} {base['mean_T']:7.2f} "
                  f"{base['linear']:7.2f} {gain.mean():+8.2f} +-{gain.std(ddof=ddof):4.2f}")
            out.setdefault(f"{source} {overrides}", {})[p] = {
                "G": [round(float(g.mean()), 2), round(float(g.std(ddof=ddof)), 2)],
                "gain": [round(float(gain.mean()), 2), round(float(gain.std(ddof=ddof)), 2)],
                "seeds": len(results), **{b: round(float(v), 2) for b, v in base.items()}}
    print("std: sample std over seeds (n - 1); gain: G minus the best baseline, in points")
    if plot:
        curves = {}
        for p in scoring.PROTOCOLS:
            for (source, overrides), results in groups.items():
                steps, gains = curve_points(results, p)
                ddof = 1 if len(results) > 1 else 0
                curves.setdefault(scoring.PROTOCOL_TITLES[p].split(" (")[0], {})[
                    f"{source} {overrides} ({len(results)} seeds)"] = (
                    steps, gains.mean(axis=0).tolist(), gains.std(axis=0, ddof=ddof).tolist())
        from zxvad import plots

        print(f"curves: {plots.seed_curves(curves, plot, 'G minus the best trivial baseline, Ped2 test')}")
    return {"benchmark": "lab-summary", "groups": out}


TARGET = "ped2"  # the lab's only target, named as make demo names it


def log_mlflow(results: list[dict], experiment: str, uri: str | None = None) -> list[str]:
    """One MLflow run per lab result, under the metric names of :mod:`zxvad.metrics`, so that
    ``tune.compare --experiment EXPERIMENT --per-target`` reads lab runs like training runs: the
    final figures as the run's metrics, every evaluation again at its step (the curve). Runs of
    one (source, overrides) share a configuration tag; the seed is a param compare ignores."""
    import mlflow

    from zxvad import metrics, names

    from zxvad.tracking.store import resolve_uri

    uri = resolve_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_ids = []
    for result in results:
        config_id = f"lab {result['source']} {' '.join(result['overrides']) or '(preset)'}"
        run = client.create_run(experiment_id, run_name=f"{config_id} seed {result['seed']}",
                                tags={names.CONFIG_TAG: config_id, names.SEED_TAG: str(result["seed"])})
        params = {"lab.source": result["source"], "lab.config": result["config"],
                  "model.image_size": result["image_size"], "train.seed": result["seed"],
                  **dict(o.split("=", 1) for o in result["overrides"])}
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for e in result["evaluations"]:
            values = {}
            for protocol, name in metrics.PROTOCOL_METRICS.items():
                base = {b: e[b][protocol] for b in metrics.BASELINES}
                values[f"{name}/{TARGET}"] = e["G"][protocol]
                values[f"{name}_gain/{TARGET}"] = metrics.protocol_gain(name, e["G"][protocol], base)
                values[f"{name}/{names.MEAN}"] = values[f"{name}/{TARGET}"]
                values[f"{name}_gain/{names.MEAN}"] = values[f"{name}_gain/{TARGET}"]
                for b, v in base.items():
                    values[f"{name}_baseline/{b}/{TARGET}"] = v
                values[f"lab.{RELATIVE}/{name}"] = e[RELATIVE][protocol]
            values["lab.minutes"] = e["minutes"]
            for key, value in values.items():
                client.log_metric(run.info.run_id, key, float(value), step=e["step"])
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    print(f"lab: logged {len(run_ids)} run(s) to MLflow experiment '{experiment}' at {uri}", flush=True)
    return run_ids


def run(args) -> dict:
    if args.summarise:
        summary = summarise(args.summarise, args.at_step, args.plot)
        if args.mlflow:
            log_mlflow([at_step(json.loads(Path(p).read_text()), args.at_step) for p in args.summarise],
                       args.mlflow, args.tracking_uri)
        return summary
    import numpy as np
    import torch

    from zxvad import config, plots, scoring
    from zxvad.bench.diagnostics import diagnostics
    from zxvad.step import build_state, train_step

    cfg = config.load(args.config, args.overrides)
    steps = args.steps if args.steps is not None else cfg.train.steps
    if steps < 1 or args.eval_every < 1:
        raise ValueError("--steps and --eval-every must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    S, T, B = cfg.model.image_size, cfg.model.T, cfg.train.batch_size
    device = torch.device(args.device)
    cache = Path(args.cache)
    test = packed("ped2", Path(args.ped2), "test", S, cache)
    if args.rescore:  # no training: the training set is not packed
        state = build_state(cfg, device)
        state.G.load_state_dict(torch.load(args.rescore, map_location=device))
        fig = evaluate(state.G, test, T, device, patch=args.patch, detail=True)
        print(_line(-1, 0.0, fig), flush=True)
        keys = [k for k in fig if not k.startswith("gain") and k not in DETAIL_KEYS]
        for p in scoring.PROTOCOLS:
            print(f"  {p}: " + "  ".join(f"{k} {100 * fig[k][p]:.2f}" for k in keys)
                  + "  " + "  ".join(f"{k} {100 * fig[k][p]:+.2f}" for k in fig if k.startswith("gain")), flush=True)
        print("  AUC per video (%), and the papers' AUC over the videos holding both classes:")
        per = fig["per_video"]
        print("  " + "video".ljust(8) + "".join(k.rjust(18) for k in per))
        for vid in per["G"]:
            print("  " + vid.ljust(8) + "".join(
                ("-" if np.isnan(per[k][vid]) else f"{100 * per[k][vid]:.2f}").rjust(18) for k in per))
        print("  " + "mixed".ljust(8) + "".join(f"{100 * fig['mixed_videos'][k]:.2f}".rjust(18) for k in per))
        print("  the papers' AUC by kind of (normal, abnormal) pair, AUC % (share of pairs %):")
        for kind in ("all", *scoring.PAIR_KINDS):
            print("  " + kind.ljust(20) + "".join(
                f"{100 * fig['pairs'][k][kind]['auc']:.2f} ({100 * fig['pairs'][k][kind]['share']:.0f})".rjust(18)
                for k in per), flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        from shards.storage import atomic_write

        atomic_write(out, json.dumps({"benchmark": "lab-rescore", "weights": args.rescore, "patch": args.patch,
                                    "overrides": args.overrides, **fig}, indent=1))
        return {"benchmark": "lab-rescore", "out": str(out),
                **{f"{k}/{p}": round(100 * fig[k][p], 2) for k in fig if k.startswith("gain")
                   for p in scoring.PROTOCOLS}}
    if args.source == "ped2":
        train = packed("ped2", Path(args.ped2), "train", S, cache)
    else:
        train = packed("videofolder", Path(args.clips), "train", S, cache)
    index, counts = window_index(train, T + 1, clean=args.source == "ti" and not args.no_clean)
    if not index:
        raise ValueError(f"{args.source}: no training window of {T + 1} frames")
    donor_pool = torch.from_numpy(np.concatenate([v["frames"][::4] for v in train])).permute(0, 3, 1, 2)
    print(f"lab: {args.source} -> ped2 test, {S}x{S}, {counts['kept']} of {counts['windows']} "
          f"windows, {len(donor_pool)} donor frames, {steps} steps, batch {B}", flush=True)

    state = build_state(cfg, device)
    g = torch.Generator().manual_seed(args.seed)

    def batch():
        picks = torch.randint(0, len(index), (B,), generator=g).tolist()
        clips = torch.stack([torch.from_numpy(train[index[i][0]]["frames"][index[i][1]:index[i][1] + T + 1])
                             for i in picks]).permute(0, 1, 4, 2, 3)
        donors = donor_pool[torch.randint(0, len(donor_pool), (B,), generator=g)]
        return (clips.to(device).float() / 127.5 - 1), (donors.to(device).float() / 127.5 - 1)

    probe = batch()  # a fixed batch of training windows for the diagnostics
    evaluations, losses, started, train_seconds = [], [], time.time(), 0.0

    def record(step: int) -> None:
        fig = evaluate(state.G, test, T, device, patch=args.patch)
        fig["diagnostics"] = diagnostics(state, *probe, cfg)
        minutes = (time.time() - started) / 60
        evaluations.append({"step": step, "minutes": round(minutes, 2),
                            "train_seconds": round(train_seconds, 1), **fig})
        print(_line(step, minutes, fig), flush=True)
        print("  " + ", ".join(f"{k} {v:.4f}" for k, v in fig["diagnostics"].items()), flush=True)

    if args.initial_eval:
        record(0)
    step = 0
    while step < steps:
        tick = time.time()
        clips, donors = batch()
        terms = train_step(state, clips, donors, generator=g)
        step += 1
        train_seconds += time.time() - tick
        if step % cfg.train.log_every == 0:
            losses.append({"step": step, **{k: round(v, 5) for k, v in dict(terms).items()}})
        out_of_time = (time.time() - started) / 60 >= args.minutes
        if step % args.eval_every == 0 or step == steps or out_of_time:
            record(step)
        if out_of_time:
            print(f"lab: stopped at step {step}: --minutes {args.minutes} reached", flush=True)
            break

    result = {"benchmark": "lab", "source": args.source, "config": args.config,
              "overrides": args.overrides, "seed": args.seed, "image_size": S, "steps": step,
              "steps_per_second": round(step / max(train_seconds, 1e-9), 3),
              "windows": counts, "protocols": list(scoring.PROTOCOLS),
              "final": evaluations[-1], "evaluations": evaluations, "losses": losses}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from shards.storage import atomic_write

    atomic_write(out, json.dumps(result, indent=1))
    if args.save:
        torch.save(state.G.state_dict(), out.with_suffix(".pt"))
    if args.mlflow:
        log_mlflow([result], args.mlflow, args.tracking_uri)
    minutes = [e["minutes"] for e in evaluations]
    curve = {p: [100 * e["gain"][p] for e in evaluations] for p in scoring.PROTOCOLS}
    plots.gain_curve(minutes, curve, out.with_suffix(".png"), title=f"{args.source} -> ped2, seed {args.seed}")
    final = evaluations[-1]
    return {"benchmark": "lab", "out": str(out), "steps": step,
            "steps_per_second": result["steps_per_second"],
            **{f"G/{p}": round(100 * final["G"][p], 2) for p in scoring.PROTOCOLS},
            **{f"gain/{p}": round(100 * final["gain"][p], 2) for p in scoring.PROTOCOLS}}
