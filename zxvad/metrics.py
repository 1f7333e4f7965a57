"""The one home of the summary metrics: AUC per target, trivial baselines, gain, and their names.

An AUC is read beside the trivial predictors of :data:`zxvad.scoring.BASELINES`, scored on the
same frames by the same protocol: ``gain`` = G's AUC minus the best baseline's on that target.
Evaluation, training, tracking, Tune and ``tune.compare`` all use these names:

- ``auc/<target>``, ``auc/mean``: G's frame-level AUC and its mean over targets;
- ``auc_baseline/<name>/<target>``: each baseline's AUC on the same frames;
- ``auc_gain/<target>``, ``auc_gain/mean``: G minus the best baseline, and its mean over targets;
- with ``eval.patch_size`` > 0, the worst-tile score (beyond the paper, :func:`zxvad.scoring.patch_psnr`)
  beside them: ``auc_patch/<target>`` and ``/mean`` (G), ``auc_patch_baseline/<name>/<target>``,
  and ``auc_patch_gain/<target>`` and ``/mean``: G's worst-tile AUC minus the best baseline under
  either score (the paper's or the worst tile's), so a win is a win over every trivial predictor.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol

from zxvad.scoring import BASELINES

from zxvad.names import AUC, BASELINE, GAIN, MEAN, PATCH, PATCH_BASELINE, PATCH_GAIN  # noqa: F401 (re-exported)


class Scored(Protocol):
    """What a target's evaluation gives: G's AUC and each baseline's."""

    auc: float
    baseline_aucs: dict[str, float]


def gain(auc: float, baseline_aucs: Mapping[str, float]) -> float:
    """G's AUC minus the best baseline's; NaN without baselines."""
    return auc - max(baseline_aucs.values()) if baseline_aucs else math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mean_auc(results: Mapping[str, Scored]) -> float:
    return _mean([r.auc for r in results.values()])


def flat(results: Mapping[str, Scored]) -> dict[str, float]:
    """Every summary metric of an evaluation under its MLflow / Ray Train name."""
    out: dict[str, float] = {}
    for target, r in results.items():
        out[f"{AUC}/{target}"] = float(r.auc)
        for name, value in r.baseline_aucs.items():
            out[f"{BASELINE}/{name}/{target}"] = float(value)
        if r.baseline_aucs:
            out[f"{GAIN}/{target}"] = gain(r.auc, r.baseline_aucs)
        patch = getattr(r, "patch_auc", None)
        if patch is not None:
            out[f"{PATCH}/{target}"] = float(patch)
            for name, value in r.patch_baseline_aucs.items():
                out[f"{PATCH_BASELINE}/{name}/{target}"] = float(value)
            either = {**{f"{n}/patch": v for n, v in r.patch_baseline_aucs.items()},
                      **r.baseline_aucs}
            if either:
                out[f"{PATCH_GAIN}/{target}"] = gain(patch, either)
    out[f"{AUC}/{MEAN}"] = mean_auc(results)
    for key in (GAIN, PATCH, PATCH_GAIN):
        values = [out[f"{key}/{t}"] for t in results if f"{key}/{t}" in out]
        if values:
            out[f"{key}/{MEAN}"] = _mean(values)
    return out


def per_target(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{target: {"G": auc, <baseline>: auc, ..., "gain": g}}`` back from :func:`flat`'s names."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if parts[0] == AUC and len(parts) == 2 and parts[1] != MEAN:
            rows.setdefault(parts[1], {})["G"] = float(value)
        elif parts[0] == BASELINE and len(parts) == 3:
            rows.setdefault(parts[2], {})[parts[1]] = float(value)
        elif parts[0] == GAIN and len(parts) == 2 and parts[1] != MEAN:
            rows.setdefault(parts[1], {})["gain"] = float(value)
        elif parts[0] == PATCH and len(parts) == 2 and parts[1] != MEAN:
            rows.setdefault(parts[1], {})["G patch"] = float(value)
        elif parts[0] == PATCH_GAIN and len(parts) == 2 and parts[1] != MEAN:
            rows.setdefault(parts[1], {})["gain patch"] = float(value)
    return rows


def table(metrics: Mapping[str, float], extra: Mapping[str, Mapping[str, str]] | None = None,
          mean_row: bool = True) -> str:
    """Plain text: one row per target (G's AUC %, each baseline's, gain in points), then the mean.

    With the worst-tile score present, two more columns: ``G patch %`` and ``gain patch``.

    Args:
        metrics: names as written by :func:`flat` (other keys are ignored).
        extra: more columns per target, e.g. ``{"street": {"frames": "396"}}``.
        mean_row: end with the mean over targets.
    """
    rows = per_target(metrics)
    baselines = [b for b in BASELINES if any(b in r for r in rows.values())]
    extra_cols = list(next(iter(extra.values())).keys()) if extra else []
    head = ["G", *baselines, *(["gain"] if baselines else [])]
    if any("G patch" in r for r in rows.values()):
        head += ["G patch", *(["gain patch"] if baselines else [])]
    title = {"G": "G %", "G patch": "G patch %"}
    lines = [f"{'target':<20}" + "".join(f"{title.get(c, c):>11}" for c in head)
             + "".join(f"{c:>8}" for c in extra_cols)]

    def cell(value: float | None, signed: bool = False) -> str:
        if value is None or math.isnan(value):
            return f"{'-':>11}"
        return f"{100 * value:+11.2f}" if signed else f"{100 * value:11.2f}"


    for name, row in rows.items():
        line = f"{name:<20}" + "".join(cell(row.get(c), c.startswith("gain")) for c in head)
        line += "".join(f"{extra[name].get(c, ''):>8}" for c in extra_cols) if extra else ""
        lines.append(line)
    if mean_row:
        means = {c: _mean([r[c] for r in rows.values() if c in r]) for c in head}
        means["G"] = metrics.get(f"{AUC}/{MEAN}", means["G"])
        lines.append(f"{'mean':<20}" + "".join(cell(means[c], c.startswith("gain")) for c in head))
    if baselines:
        lines.append("gain: G's AUC minus the best baseline's, in points (baselines: trivial "
                     "predictors scored on the same frames)")
    if "G patch" in head:
        lines.append("G patch: G scored by its worst tile (eval.patch_size, beyond the paper); gain "
                     "patch: minus the best baseline under either score")
    return "\n".join(lines)
