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
  either score (the paper's or the worst tile's), so a win is a win over every trivial predictor;
- the other protocols papers report (:data:`zxvad.scoring.PROTOCOLS`), for G and every baseline
  alike, under the names of :data:`PROTOCOL_METRICS`: ``auc_raw`` (pooled AUC of -PSNR, no
  per-video normalisation), ``auc_macro`` (mean of per-video AUCs; videos of one class are left
  out), ``aupr`` and ``eer`` (of the pooled min-max score). Each is written as ``NAME/<target>``
  and ``NAME/mean`` (G), ``NAME_baseline/<baseline>/<target>`` and ``NAME_gain/<target>`` and
  ``/mean`` (G better by that many points: for ``eer``, the best baseline's EER minus G's);
- with ``eval.smooth_sigma`` > 0, every protocol again on scores smoothed over time by a Gaussian
  of that many frames, named with ``_smooth`` (``auc_smooth/<target>``, ``eer_smooth/<target>``, ...).

``auc/<target>`` stays the papers' figure (pooled AUC, per-video min-max), so old runs compare.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol

from zxvad.scoring import BASELINES

from zxvad.names import AUC, BASELINE, GAIN, MEAN, PATCH, PATCH_BASELINE, PATCH_GAIN  # noqa: F401 (re-exported)

# scoring.all_protocols' keys -> metric names; micro_minmax is the papers' figure, ``auc``
PROTOCOL_METRICS = {"micro_minmax": AUC, "micro_raw": "auc_raw", "macro": "auc_macro",
                    "aupr": "aupr", "eer": "eer"}
PROTOCOL_TITLES = {"auc": "AUC, per-video min-max (papers)", "auc_raw": "AUC, raw -PSNR",
                   "auc_macro": "AUC, macro (per video)", "aupr": "AUPR (min-max)",
                   "eer": "EER (min-max, lower better)"}
SMOOTH = "_smooth"
LOWER_IS_BETTER = ("eer", "eer" + SMOOTH)


def protocol_names(smoothed: bool = False) -> list[str]:
    """The metric names of every protocol, then (when ``smoothed``) their ``_smooth`` twins."""
    names = list(PROTOCOL_METRICS.values())
    return names + [n + SMOOTH for n in names] if smoothed else names


def lower_is_better(metric: str) -> bool:
    """True for an error rate (``eer/<target>``), where the best run has the lowest value."""
    return metric.split("/", 1)[0] in LOWER_IS_BETTER


def protocol_metrics(videos, T: int, sigma: float = 0.0) -> dict[str, float]:
    """Every protocol of one predictor's :class:`zxvad.scoring.VideoResult` s, by metric name;
    with ``sigma`` > 0 also each on scores smoothed over ``sigma`` frames (``NAME_smooth``)."""
    from zxvad.scoring import all_protocols

    out = {PROTOCOL_METRICS[k]: v for k, v in all_protocols(videos, T).items()}
    if sigma > 0:
        out.update({PROTOCOL_METRICS[k] + SMOOTH: v
                    for k, v in all_protocols(videos, T, sigma).items()})
    return out


def protocol_gain(name: str, g: float, baselines: Mapping[str, float]) -> float:
    """How much better G is than the best baseline under ``name`` (positive = G better)."""
    values = [v for v in baselines.values() if not math.isnan(v)]
    if not values or math.isnan(g):
        return math.nan
    return min(values) - g if name in LOWER_IS_BETTER else g - max(values)


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
        out.update(_protocol_flat(target, getattr(r, "protocols", None) or {}))
    out[f"{AUC}/{MEAN}"] = mean_auc(results)
    extra = [n for n in protocol_names(True) if n != AUC]
    for key in (GAIN, PATCH, PATCH_GAIN, *extra, *(f"{n}_gain" for n in extra)):
        values = [out[f"{key}/{t}"] for t in results if f"{key}/{t}" in out]
        if values:
            out[f"{key}/{MEAN}"] = _mean(values)
    return out


def _protocol_flat(target: str, protocols: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{predictor: {name: value}}`` of one target under :data:`PROTOCOL_METRICS` names (``auc``
    itself, already written as the papers' figure, is left out unless smoothed)."""
    out: dict[str, float] = {}
    g = protocols.get("G", {})
    for name, value in g.items():
        if name == AUC:
            continue
        out[f"{name}/{target}"] = float(value)
        baselines = {b: float(p[name]) for b, p in protocols.items() if b != "G" and name in p}
        for b, v in baselines.items():
            out[f"{name}_baseline/{b}/{target}"] = v
        if baselines:
            out[f"{name}_gain/{target}"] = protocol_gain(name, float(value), baselines)
    return out


def protocol_rows(metrics: Mapping[str, float], target: str) -> dict[str, dict[str, float]]:
    """``{metric name: {"G": v, <baseline>: v, "gain": g}}`` of one target, back from :func:`flat`."""
    rows: dict[str, dict[str, float]] = {}
    for name in protocol_names(True):
        g = metrics.get(f"{name}/{target}")
        if g is None:
            continue
        base = BASELINE if name == AUC else f"{name}_baseline"
        row = {"G": float(g), **{b: float(metrics[f"{base}/{b}/{target}"]) for b in BASELINES
                                 if f"{base}/{b}/{target}" in metrics}}
        gain_key = f"{GAIN if name == AUC else name + '_gain'}/{target}"
        if gain_key in metrics:
            row["gain"] = float(metrics[gain_key])
        rows[name] = row
    return rows


def protocol_table(metrics: Mapping[str, float]) -> str:
    """Plain text: per target, one row per protocol (G, each baseline, gain in points)."""
    targets = [k.split("/", 1)[1] for k in metrics
               if k.startswith(f"{AUC}/") and k != f"{AUC}/{MEAN}"]
    blocks = []
    for target in targets:
        rows = protocol_rows(metrics, target)
        if len(rows) < 2:  # only the papers' AUC: the main table already shows it
            continue
        head = ["G", *[b for b in BASELINES if any(b in r for r in rows.values())], "gain"]
        lines = [f"{target:<44}" + "".join(f"{c:>11}" for c in head)]
        for name, row in rows.items():
            title = PROTOCOL_TITLES.get(name.removesuffix(SMOOTH), name)
            title += ", smoothed" if name.endswith(SMOOTH) else ""
            cells = []
            for c in head:
                v = row.get(c)
                cells.append(f"{'-':>11}" if v is None or math.isnan(v)
                             else f"{100 * v:+11.2f}" if c == "gain" else f"{100 * v:11.2f}")
            lines.append(f"{title:<44}" + "".join(cells))
        blocks.append("\n".join(lines))
    if blocks:
        blocks.append("protocols in %; gain: G better than the best baseline by that many points "
                      "(for EER: the best baseline's EER minus G's)")
    return "\n\n".join(blocks)


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
