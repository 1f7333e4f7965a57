"""Gain against training minutes: one training run's evaluations, read back from MLflow.

    python -m zxvad.train --config demo --set train.steps=900 --set eval.eval_every=150
    python -m zxvad.bench curve --run RUN_ID [--tracking-uri sqlite:///mlflow.db] [--out curve.png]

For every step at which the run evaluated, it prints the wall minutes since the run started
(evaluations included), G's AUC and its gain over the best trivial baseline per target, and
draws the gains against minutes (PNG): is G still gaining when the run stops, and how fast?
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="MLflow run id of a training run")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--out", default="gain-curve.png", help="PNG to write (default gain-curve.png)")


def run(args) -> dict:
    from zxvad import metrics, plots
    from zxvad.tracking.read import metric_history
    from zxvad.tracking.store import absolute_uri, resolve_uri

    uri = absolute_uri(resolve_uri(args.tracking_uri))
    start_ms, history = metric_history(uri, args.run, (f"{metrics.AUC}/", f"{metrics.GAIN}/"))
    gains = sorted(k for k in history if k.startswith(f"{metrics.GAIN}/"))
    if not gains:
        raise ValueError(f"run {args.run} logged no {metrics.GAIN}/* metric (no baselines?)")
    steps = sorted({s for k in gains for s, _, _ in history[k]})
    if len(steps) < 2:
        raise ValueError(f"run {args.run} evaluated at {len(steps)} step(s): train with "
                         "eval.eval_every > 0 for a curve")
    at = {k: {s: (t, v) for s, t, v in history[k]} for k in history}
    targets = [k.split("/", 1)[1] for k in gains]
    minutes = [round((max(at[k][s][0] for k in gains if s in at[k]) - start_ms) / 60000, 2)
               for s in steps]
    rows = []
    print(f"{'step':>6} {'minutes':>8}  " + "  ".join(f"{t:>14}" for t in targets))
    for step, minute in zip(steps, minutes):
        cells, row = [], {"step": step, "minutes": minute}
        for t in targets:
            g = at[f"{metrics.GAIN}/{t}"].get(step, (0, float("nan")))[1] * 100
            auc = at.get(f"{metrics.AUC}/{t}", {}).get(step, (0, float("nan")))[1] * 100
            row[t] = {"G": round(auc, 2), "gain": round(g, 2)}
            cells.append(f"{auc:6.2f} ({g:+6.2f})" if t != metrics.MEAN else f"{g:+14.2f}")
        rows.append(row)
        print(f"{step:>6} {minute:>8.2f}  " + "  ".join(f"{c:>14}" for c in cells))
    print("cells: G's AUC % (gain over the best baseline, points)")
    curve = {t: [r[t]["gain"] for r in rows] for t in targets}
    path = plots.gain_curve(minutes, curve, args.out, title=f"run {args.run[:8]}")
    print(f"plot: {path}")
    return {"benchmark": "curve", "run": args.run, "rows": rows, "plot": str(path)}
