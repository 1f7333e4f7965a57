"""Compare runs of one MLflow experiment: the AUC table of the paper's Tables 4 and 5, and a plot.

``python -m tune.compare --experiment NAME [--by data.fraction] [--metric auc_gain/mean] [--out DIR]``

One row per configuration (runs that differ only in their seeds are grouped), one column per
target AUC, their mean and ``gain`` (``auc_gain/mean``: G's AUC minus the best trivial baseline's,
averaged over targets), in percent; with several seeds a cell reads ``mean ± std``. ``--metric``
ranks the rows by any of ``auc/<target>``, ``auc/mean``, ``auc_gain/<target>``, ``auc_gain/mean``, or
any other protocol the runs logged (``auc_raw/mean``, ``auc_macro/<target>``, ``aupr_gain/mean``,
``eer/<target>`` (lowest first), their ``_smooth`` twins: see :mod:`zxvad.metrics`). The best
cell of each column is bold in the Markdown table; a cell marked † lies closer to that best than
the seed spread (the larger of the two standard deviations), so the difference is not
significant. Writes ``NAME.csv`` (fractions, full precision), ``NAME.md`` and ``NAME.png`` (AUC
against ``--by``, or one bar per row) into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.storage import atomic_path, atomic_write
from tune.space import SEED_KEYS
from zxvad.names import CONFIG_TAG, PARENT_TAG
from zxvad import metrics as metric_names

# Params that differ between runs of one configuration without changing it.
IGNORED = (*SEED_KEYS, "tracking.run_name")
NOT_SIGNIFICANT = "†"
GAIN = "gain"  # the column of auc_gain/mean; per-target gains are kept as "gain/<target>"
BASELINE = "baseline"  # auc_baseline/<name>/<target> is kept as "baseline/<name>/<target>"
# the protocols beside the papers' AUC, and their gains: columns named by the metric itself
OTHER_PROTOCOLS = {h for n in metric_names.protocol_names(True) if n != metric_names.AUC
                   for h in (n, f"{n}_gain")}


class CompareError(ValueError):
    """Nothing to compare; one line naming the experiment or the option."""


@dataclass
class Row:
    """One configuration: its runs (one per seed) and their final AUCs."""

    key: str
    params: dict[str, str]
    runs: list[str] = field(default_factory=list)  # run ids
    values: dict[str, list[float]] = field(default_factory=dict)  # column -> one value per run
    label: dict[str, str] = field(default_factory=dict)  # the params that tell rows apart

    def mean(self, column: str) -> float:
        vals = self.values.get(column, [])
        return sum(vals) / len(vals) if vals else math.nan

    def std(self, column: str) -> float:
        """Sample standard deviation over seeds; 0 for a single run."""
        vals = self.values.get(column, [])
        if len(vals) < 2:
            return 0.0
        m = sum(vals) / len(vals)
        return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


@dataclass
class Table:
    experiment: str
    rows: list[Row]
    targets: list[str]  # target names; the columns are these and "mean"
    label_keys: list[str]
    ranked_by: list[str] = field(default_factory=list)  # another protocol's column, once ranked by it

    @property
    def columns(self) -> list[str]:
        gain = [GAIN] if any(r.values.get(GAIN) for r in self.rows) else []
        return [*self.targets, "mean", *gain, *self.ranked_by]

    @property
    def seeded(self) -> bool:
        return any(len(r.runs) > 1 for r in self.rows)

    def best(self, column: str) -> Row | None:
        rows = [r for r in self.rows if not math.isnan(r.mean(column))]
        pick = min if metric_names.lower_is_better(column) else max
        return pick(rows, key=lambda r: r.mean(column)) if rows else None

    def not_significant(self, row: Row, column: str) -> bool:
        """True when ``row`` trails the column's best by less than the seed spread."""
        best = self.best(column)
        if best is None or best is row or not self.seeded or math.isnan(row.mean(column)):
            return False
        spread = max(best.std(column), row.std(column))
        return abs(best.mean(column) - row.mean(column)) < spread


def load_runs(experiment: str, uri: str, include_failed: bool = False,
              parent_run_id: str = "") -> list[Any]:
    """The training runs of ``experiment`` that logged an AUC (FAILED or KILLED ones only if
    asked; only one sweep run's children if given)."""
    from zxvad.tracking.read import training_runs
    from zxvad.tracking.store import TrackingError

    try:
        return training_runs(experiment, uri, include_failed, parent_run_id)
    except TrackingError as err:
        raise CompareError(str(err)) from None


def build_table(experiment: str, runs: list[Any], by: str | None = None) -> Table:
    """Group runs by configuration and collect each run's final AUC per target and their mean."""
    rows: dict[str, Row] = {}
    targets: list[str] = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        params = dict(run.data.params)
        kept = {k: v for k, v in params.items() if k not in IGNORED}
        key = run.data.tags.get(CONFIG_TAG) or repr(sorted(kept.items()))
        row = rows.setdefault(key, Row(key=key, params=kept))
        row.runs.append(run.info.run_id)
        metrics = run.data.metrics  # the latest value of each metric
        aucs = {k[len("auc/"):]: v for k, v in metrics.items() if k.startswith("auc/") and k != "auc/mean"}
        for name in aucs:
            if name not in targets:
                targets.append(name)
        for name, value in aucs.items():
            row.values.setdefault(name, []).append(float(value))
        mean = metrics.get("auc/mean", sum(aucs.values()) / len(aucs) if aucs else math.nan)
        row.values.setdefault("mean", []).append(float(mean))
        for key, value in metrics.items():
            head, _, name = key.partition("/")
            if head == metric_names.BASELINE:  # auc_baseline/<baseline>/<target>
                row.values.setdefault(f"{BASELINE}/{name}", []).append(float(value))
            if head == metric_names.GAIN:
                column = GAIN if name == metric_names.MEAN else f"{GAIN}/{name}"
                row.values.setdefault(column, []).append(float(value))
            elif head in OTHER_PROTOCOLS and "/" not in name:  # kept under its own name, to rank by
                row.values.setdefault(key, []).append(float(value))
    ordered = list(rows.values())
    all_keys = sorted({k for r in ordered for k in r.params})
    varying = [k for k in all_keys if len({r.params.get(k) for r in ordered}) > 1]
    if by is not None:
        if by not in all_keys:
            raise CompareError(f"--by {by}: no such param in experiment '{experiment}' "
                               f"(params that vary: {', '.join(varying) or 'none'})")
        varying = [by, *[k for k in varying if k != by]]
        ordered.sort(key=lambda r: _sort_value(r.params.get(by)))
    short = {k: _shorten([r.params.get(k, "") for r in ordered]) for k in varying}
    for i, row in enumerate(ordered):
        row.label = {k: short[k][i] for k in varying}
    return Table(experiment, ordered, targets, varying)


def column_of(metric: str, table: Table) -> str:
    """``auc/street`` -> ``street``, ``auc_gain/mean`` -> ``gain``; one clear error otherwise."""
    head, _, name = metric.partition("/")
    column = {metric_names.AUC: name, metric_names.GAIN: GAIN if name == metric_names.MEAN
              else f"{GAIN}/{name}"}.get(head, metric if head in OTHER_PROTOCOLS else None)
    if not name or column is None or not any(r.values.get(column) for r in table.rows):
        known = [f"auc/{t}" for t in table.columns if t != GAIN]
        known += sorted(f"auc_gain/{c[len(GAIN) + 1:]}" for c in {k for r in table.rows
                        for k in r.values} if c.startswith(f"{GAIN}/"))
        known += ["auc_gain/mean"] if GAIN in table.columns else []
        known += sorted({k for r in table.rows for k in r.values if k.split("/")[0] in OTHER_PROTOCOLS})
        raise CompareError(f"--metric {metric}: not logged by the runs of experiment "
                           f"'{table.experiment}' (known: {', '.join(known)})")
    return column


def rank(table: Table, metric: str) -> str:
    """Order the rows best first by ``metric`` (lowest first for an error rate); returns its column."""
    column = column_of(metric, table)
    sign = 1 if metric_names.lower_is_better(metric) else -1
    table.rows.sort(key=lambda r: (math.isnan(r.mean(column)), sign * r.mean(column)))
    if column not in table.columns:  # shown beside the papers' AUCs, so the order can be read
        table.ranked_by.append(column)
    return column


def _sort_value(text: str | None) -> tuple:
    try:
        return (0, float(text), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(text))


def _shorten(values: list[str]) -> list[str]:
    """Paths lose the folders they all share: s3://b/x/sht, s3://b/x/hmdb -> sht, hmdb."""
    if len(values) < 2 or not all("/" in v for v in values):
        return values
    parts = [v.rstrip("/").split("/") for v in values]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


# ----------------------------------------------------------------------------- outputs


def _cell(table: Table, row: Row, column: str, bold: bool) -> str:
    m = row.mean(column)
    if math.isnan(m):
        return "-"
    signed = column == GAIN or column.split("/")[0].endswith("_gain")
    text = f"{100 * m:+.2f}" if signed else f"{100 * m:.2f}"
    if table.seeded:
        text += f" ± {100 * row.std(column):.2f}"
    if bold and table.best(column) is row:
        text = f"**{text}**"
    if table.not_significant(row, column):
        text += f" {NOT_SIGNIFICANT}"
    return text


def to_markdown(table: Table, bold: bool = True) -> str:
    """The AUC table (percent) as Markdown; the best cell per column in bold."""
    head = [*(table.label_keys or ["config"]), *table.columns, "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, row in enumerate(table.rows):
        label = [row.label[k] for k in table.label_keys] or [str(i + 1)]
        cells = [_cell(table, row, c, bold) for c in table.columns]
        lines.append("| " + " | ".join([*label, *cells, str(len(row.runs))]) + " |")
    notes = [f"AUC % of experiment '{table.experiment}', final value of each run"]
    if GAIN in table.columns:
        notes.append("gain: G's AUC minus the best trivial baseline's (copy_last, mean_T, linear), "
                     "in points, averaged over targets")
    if table.seeded:
        notes.append(f"mean ± std over seeds; {NOT_SIGNIFICANT}: behind the best by less than the "
                     "seed spread (not significant)")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + ".\n"


def _mean_std(row: Row, column: str, spread: bool = True, signed: bool = False) -> str:
    if not row.values.get(column):
        return "-"
    text = f"{100 * row.mean(column):{'+' if signed else ''}.2f}"
    return text + (f" ± {100 * row.std(column):.2f}" if spread and len(row.values[column]) > 1 else "")


def per_target_markdown(table: Table) -> str:
    """One table per target (and the mean): each configuration's G, the trivial baselines on the
    same frames, and G's gain over the best of them, mean ± std over the configuration's runs."""
    baselines = sorted({c.split("/")[1] for r in table.rows for c in r.values
                        if c.startswith(f"{BASELINE}/")})
    blocks = []
    for target in [*table.targets, "mean"]:
        gain = GAIN if target == "mean" else f"{GAIN}/{target}"
        lines = [f"**{target}**", "",
                 "| " + " | ".join(["config", "G", *baselines, "gain", "runs"]) + " |",
                 "|" + "---|" * (len(baselines) + 4)]
        for row in table.rows:
            label = ", ".join(f"{k}={v}" for k, v in row.label.items() if v != "") or "all runs"
            if target == "mean":  # the baselines' mean over the targets (their best differs)
                cells = []
                for b in baselines:
                    means = [row.mean(f"{BASELINE}/{b}/{t}") for t in table.targets]
                    cells.append(f"{100 * sum(means) / len(means):.2f}" if means and not
                                 any(math.isnan(m) for m in means) else "-")
            else:
                cells = [_mean_std(row, f"{BASELINE}/{b}/{target}", spread=False) for b in baselines]
            lines.append("| " + " | ".join([label, _mean_std(row, target), *cells,
                                            _mean_std(row, gain, signed=True), str(len(row.runs))]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def to_csv(table: Table) -> str:
    """One row per configuration; AUCs as fractions at full precision."""
    out = io.StringIO()
    writer = csv.writer(out)
    head = [*table.label_keys, "runs"]
    for column in table.columns:
        head += [f"{column}_mean", f"{column}_std", f"{column}_not_significant"]
    writer.writerow(head)
    for row in table.rows:
        line: list[Any] = [*(row.label[k] for k in table.label_keys), len(row.runs)]
        for column in table.columns:
            line += [repr(row.mean(column)), repr(row.std(column)),
                     int(table.not_significant(row, column))]
        writer.writerow(line)
    return out.getvalue()


def plot(table: Table, path: Path, by: str | None = None) -> None:
    """AUC (%) against ``by`` (one line per target and the mean, error bars = seed std), or bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if by is not None:
        others = [k for k in table.label_keys if k != by]
        groups: dict[str, list[Row]] = {}
        for row in table.rows:
            groups.setdefault(", ".join(row.label[k] for k in others), []).append(row)
        xs_all = []
        for group, rows in groups.items():
            rows = sorted(rows, key=lambda r: _sort_value(r.params.get(by)))
            xs = [_sort_value(r.params.get(by))[1] for r in rows]
            xs_all += xs
            for column in table.columns:
                ys = [100 * r.mean(column) for r in rows]
                es = [100 * r.std(column) for r in rows]
                name = f"{column} ({group})" if group else column
                ax.errorbar(xs, ys, yerr=es if table.seeded else None, marker="o", capsize=3,
                            label=name, linewidth=2.2 if column == "mean" else 1.2)
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(by)
    else:
        names = [", ".join(r.label.values()) or str(i + 1) for i, r in enumerate(table.rows)]
        ys = [100 * r.mean("mean") for r in table.rows]
        es = [100 * r.std("mean") for r in table.rows]
        ax.bar(range(len(ys)), ys, yerr=es if table.seeded else None, capsize=3)
        ax.set_xticks(range(len(ys)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("configuration")
    ax.set_ylabel("frame-level AUC (%)")
    ax.set_title(f"{table.experiment}")
    ax.grid(alpha=0.3)
    if by is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(table: Table, out: Path, by: str | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{table.experiment}.{ext}" for ext in ("csv", "md", "png")}
    atomic_write(paths["csv"], to_csv(table))
    atomic_write(paths["md"], to_markdown(table))
    with atomic_path(paths["png"]) as tmp:
        plot(table, tmp, by)
    return paths


def provenance(runs: list[Any]) -> str:
    """One line: which sweep runs (MLflow parents) the compared runs are children of."""
    parents: dict[str, int] = {}
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG, "")
        parents[parent] = parents.get(parent, 0) + 1
    parts = [f"{n} child run(s) of sweep run {p}" for p, n in parents.items() if p]
    if "" in parents:  # runs trained alone, or trials logged before sweeps nested them
        parts.append(f"{parents['']} run(s) with no parent")
    return "runs: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment (a sweep's name)")
    parser.add_argument("--by", default=None, metavar="KEY",
                        help="config key to sort rows by and plot against, e.g. data.fraction")
    parser.add_argument("--metric", default=None, metavar="NAME",
                        help="rank rows best first by auc/mean, auc/<target>, auc_gain/mean or "
                             "auc_gain/<target> (gain: G's AUC minus the best trivial baseline's), "
                             "or another protocol: auc_raw, auc_macro, aupr, eer (lowest first), "
                             "their _gain and _smooth forms, /<target> or /mean")
    parser.add_argument("--out", default=None, help="output folder (default: compare/EXPERIMENT)")
    parser.add_argument("--parent", default="", metavar="RUN_ID",
                        help="only the child runs of this sweep run (default: every training run)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--include-failed", action="store_true",
                        help="also show runs that ended FAILED or KILLED (left out by default)")
    parser.add_argument("--per-target", action="store_true",
                        help="also print one table per target: G, each trivial baseline and the gain")
    args = parser.parse_args(argv)

    from zxvad.tracking.store import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: --tracking-uri {uri}: no such MLflow database", file=sys.stderr)
        return 2
    try:
        runs = load_runs(args.experiment, uri, args.include_failed, args.parent)
        table = build_table(args.experiment, runs, args.by)
        if args.metric:
            rank(table, args.metric)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # MLflow raises many kinds for a bad or unreachable store
        print(f"error: MLflow at {uri}: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(to_markdown(table))
    if args.per_target:
        print("\n" + per_target_markdown(table) + "\n")
    print(provenance(runs))
    paths = write_outputs(table, Path(args.out or Path("compare") / args.experiment), args.by)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
