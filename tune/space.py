"""Sweep files: the schema, its validation (before any Ray work) and the list of trial variants.

A sweep file names a base training config, fixed overrides and a search space over any config
key::

    name: loss-weights            # MLflow experiment and Tune run name
    base: paper                   # preset or config file (relative to this file)
    set: {train.steps: 5000}      # fixed overrides of the base config
    space:                        # config key -> one dimension
      loss.alpha_n: {loguniform: [0.1, 10]}
      model.backbone: {choice: [resnet50, alexnet]}
      data.train_shards,data.donor_shards: {grid: [[a, a], [b, b]]}   # joint keys
    search: random                # random | grid | optuna | hyperopt
    metric: auc/mean              # auc/mean, auc/<target>, auc_gain/mean or auc_gain/<target>
    mode: max
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # rounds = evaluations
    samples: 8                    # draws of the random dimensions
    seeds: 3                      # every configuration repeated with this many seeds
    resources: {workers: 1, cpus: 1, gpus: 1}   # per trial
    max_concurrent: 4             # 0: as many as the cluster's resources allow

Tune draws every trial (``tune.sweep.param_space``: ``grid`` is ``tune.grid_search``, ``choice`` is
``tune.choice`` under ``random`` and a grid under ``grid``, ranges are ``tune.loguniform`` and
``tune.uniform``, seeds a ``grid_search`` over ``seed``); random values are drawn once per sample
and kept over the grids, so every seed of a configuration trains the very same values. Optuna and
HyperOpt propose one configuration per sample and take no grids. :meth:`Sweep.variants` expands
the same space on the driver to validate it and count trials before Ray starts. Every error is a
:class:`SweepError`: one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zxvad import config as config_lib
from zxvad.config import Config, ConfigError

PACKAGED_DIR = Path(__file__).parent / "configs"
SEARCHES = ("random", "grid", "optuna", "hyperopt")
MODEL_SEARCHES = {"optuna": "optuna", "hyperopt": "hyperopt"}  # search -> the package it needs
SCHEDULERS = ("asha", "fifo")
KINDS = ("loguniform", "uniform", "choice", "grid")
# Keys a seed sets: R is untrained, so its random init is part of what a seed varies.
SEED_KEYS = ("train.seed", "data.seed", "model.backbone_seed")
# Local paths are made absolute: Tune runs each trial in a folder of its own.
PATH_KEYS = ("data.train_shards", "data.donor_shards", "train.storage_path", "tracking.artifact_location")
SEED = "seed"  # Tune's name of the seed dimension (0, 1, ...), added to each key of SEED_KEYS
TOP_KEYS = ("name", "base", "set", "space", "search", "metric", "mode", "scheduler", "samples",
            "seeds", "resources", "max_concurrent", "search_seed")


class SweepError(ValueError):
    """A bad sweep file; the message is one line naming the file and the key."""


@dataclass
class Dimension:
    """One searched dimension over one key or several keys set together."""

    keys: tuple[str, ...]
    kind: str  # loguniform | uniform | choice | grid
    values: list[Any]  # [lo, hi] for ranges; the options otherwise (tuples for joint keys)

    @property
    def name(self) -> str:
        return ",".join(self.keys)

    def is_range(self) -> bool:
        return self.kind in ("loguniform", "uniform")

    def assign(self, value: Any) -> dict[str, Any]:
        """``{key: value}`` for one option (a joint option spreads over its keys)."""
        if len(self.keys) == 1:
            return {self.keys[0]: value}
        return dict(zip(self.keys, value))


@dataclass
class Scheduler:
    kind: str = "fifo"  # asha | fifo
    grace_period: int = 1  # evaluation rounds before a trial may be stopped
    reduction_factor: int = 2


@dataclass
class Resources:
    workers: int = 1  # Ray Train workers per trial (train.num_workers)
    cpus: float = 1.0  # per worker: reserved by each trial worker (train.cpus_per_worker), sizes concurrency
    gpus: int = 0  # per worker: 0 or 1 (train.use_gpu)


@dataclass
class Sweep:
    name: str
    base: Config  # base config with ``set`` and resources applied, validated
    base_ref: str  # as written in the file
    fixed: dict[str, Any]
    space: list[Dimension]
    search: str
    metric: str
    mode: str
    scheduler: Scheduler
    samples: int
    seeds: int
    resources: Resources
    max_concurrent: int
    search_seed: int
    path: Path
    workdir: str = field(default_factory=os.getcwd)  # where relative paths are rooted
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def eval_rounds(self) -> int:
        """Evaluations of the longest trial: ASHA's max_t."""
        rounds = 1
        for variant in self.variants() if self.search not in MODEL_SEARCHES else [{"params": {}}]:
            cfg = self.trial_config(variant["params"], 0)
            rounds = max(rounds, eval_round(cfg.train.steps, cfg.train.steps, cfg.eval.eval_every))
        return rounds

    def variants(self) -> list[dict[str, Any]]:
        """Every trial of a random or grid sweep, seeds innermost (config-major order).

        Returns:
            ``[{"config_id": "3f2a...", "seed": 0, "params": {"loss.alpha_n": 0.5, ...}}, ...]``
        """
        rng = np.random.default_rng(self.search_seed)
        crossed = [d for d in self.space if d.kind == "grid" or (d.kind == "choice" and self.search == "grid")]
        drawn = [d for d in self.space if d not in crossed]
        out = []
        for _ in range(self.samples):
            sampled: dict[str, Any] = {}
            for dim in drawn:
                sampled.update(dim.assign(_draw(dim, rng)))
            for combo in itertools.product(*[d.values for d in crossed]):
                params = dict(sampled)
                for dim, value in zip(crossed, combo):
                    params.update(dim.assign(value))
                params = {k: params[k] for d in self.space for k in d.keys}  # file order
                out += [{"config_id": config_id(params), "seed": s, "params": params}
                        for s in range(self.seeds)]
        return out

    def trial_config(self, params: dict[str, Any], seed: int) -> Config:
        """The base config with one variant's values and seed applied, validated."""
        values = dict(params)
        values.update({key: _current(self.base, key) + seed for key in SEED_KEYS})
        chosen = config_lib.with_values(self.base, values)
        values.update({key: self._absolute(_current(chosen, key)) for key in PATH_KEYS})
        values["eval.targets"] = {k: self._absolute(v) for k, v in chosen.eval.targets.items()}
        return config_lib.with_values(self.base, values)

    def _absolute(self, path: str) -> str:
        if not path or "://" in path or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.workdir, path))


def config_id(params: dict[str, Any]) -> str:
    """Short stable hash of one configuration's searched values (seeds excluded)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def eval_round(step: int, steps: int, eval_every: int) -> int:
    """The evaluation round a report at ``step`` closes (the last round may be short)."""
    every = eval_every or steps
    return max(1, math.ceil(min(step, steps) / every))


def _draw(dim: Dimension, rng: np.random.Generator) -> Any:
    if dim.kind == "choice":
        return dim.values[int(rng.integers(len(dim.values)))]
    lo, hi = dim.values
    if dim.kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def known_metrics(cfg: Config) -> list[str]:
    return [f"{head}/{name}" for head in ("auc", "auc_gain") for name in ("mean", *cfg.eval.targets)]


def find(name_or_path: str) -> Path:
    """A sweep file by path, or a packaged one by name (``demo``, ``loss-weights``...)."""
    path = Path(name_or_path)
    if not path.exists() and not path.suffix and (PACKAGED_DIR / f"{name_or_path}.yaml").exists():
        path = PACKAGED_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        packaged = ", ".join(sorted(p.stem for p in PACKAGED_DIR.glob("*.yaml")))
        raise SweepError(f"sweep '{name_or_path}': no such file or packaged sweep (packaged: {packaged})")
    return path


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read, override and validate a sweep file; no Ray, no MLflow, no data access.

    Args:
        name_or_path: a YAML file or a packaged sweep name.
        overrides: ``key=value`` items; sweep keys (``seeds=3``, ``resources.workers=2``)
            or config keys (``train.steps=100``, added to ``set``).
    """
    path = find(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"sweep '{path}': not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep '{path}': expected a mapping with name, base, space, ...")
    raw = dict(raw)
    raw["set"] = dict(raw.get("set") or {})
    for text in overrides:
        key, value = _parse_override(path, text)
        head = key.split(".", 1)[0]
        if head in TOP_KEYS and head != "set":
            if "." in key:
                raw[head] = dict(raw.get(head) or {})
                raw[head][key.split(".", 1)[1]] = value
            else:
                raw[key] = value
        else:
            raw["set"][key] = value
    return _validate(path, raw)


def _parse_override(path: Path, text: str) -> tuple[str, Any]:
    try:
        return config_lib.parse_override(text)
    except ConfigError as err:
        raise SweepError(f"sweep '{path}': {err}") from None


def _validate(path: Path, raw: dict[str, Any]) -> Sweep:
    def fail(key: str, why: str) -> SweepError:
        return SweepError(f"sweep '{path}': key '{key}' {why}")

    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise fail(unknown[0], f"is unknown (known: {', '.join(TOP_KEYS)})")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise fail("name", f"= {name!r}: use letters, digits, '.', '_' and '-'")
    base_ref, base, resources = _base(path, raw, fail)
    space = _space(raw.get("space"), base, fail)
    search = _search(raw.get("search"), space, fail)
    metric, mode = _objective(raw, base, fail)
    scheduler = _scheduler(raw.get("scheduler"), fail)
    if scheduler.kind == "asha" and not base.eval.targets:
        raise fail("scheduler", "= asha needs evaluation targets (eval.targets) to rank trials")
    counts = _counts(raw, search, space, fail)
    sweep = Sweep(name=name, base=base, base_ref=base_ref, fixed=dict(raw["set"]), space=space,
                  search=search, metric=metric, mode=mode, scheduler=scheduler,
                  samples=counts["samples"], seeds=counts["seeds"], resources=resources,
                  max_concurrent=counts["max_concurrent"], search_seed=counts["search_seed"],
                  path=path, raw=raw)
    if search not in MODEL_SEARCHES:  # every trial's config must be valid, not just each value alone
        for variant in sweep.variants():
            try:
                sweep.trial_config(variant["params"], variant["seed"])
            except ConfigError as err:
                raise SweepError(f"sweep '{path}': {err} (in the variant "
                                 f"{json.dumps(variant['params'], default=str)})") from None
    if scheduler.kind == "asha" and sweep.eval_rounds <= scheduler.grace_period:
        raise fail("scheduler", f"= asha: trials have {sweep.eval_rounds} evaluation round(s), not more "
                   f"than grace_period {scheduler.grace_period}; lower eval.eval_every")
    return sweep


def _base(path: Path, raw: dict[str, Any], fail) -> tuple[str, Config, Resources]:
    """The base config (a preset, or a file beside the sweep file) with ``set`` and the resources."""
    base_ref = raw.get("base") or "demo"
    if not isinstance(base_ref, str):
        raise fail("base", f"= {base_ref!r}: expected a preset name or a config file")
    beside = path.parent / base_ref
    base_path = str(beside) if beside.is_file() else base_ref
    resources = _resources(raw.get("resources"), fail)
    # each trial's workers reserve what the sweep sized its concurrency with
    fixed_all = {**raw["set"], "train.num_workers": resources.workers, "train.use_gpu": resources.gpus > 0,
                 "train.cpus_per_worker": resources.cpus}
    try:
        base = config_lib.load(base_path, [f"{k}={json.dumps(v)}" for k, v in fixed_all.items()])
    except ConfigError as err:
        raise SweepError(f"sweep '{path}': {err}") from None
    return base_ref, base, resources


def _search(search: Any, space: list[Dimension], fail) -> str:
    """The search algorithm, random by default when the space holds a range, else grid."""
    if search is None:
        search = "random" if any(d.is_range() for d in space) else "grid"
    if search not in SEARCHES:
        raise fail("search", f"= {search!r}: expected one of {', '.join(SEARCHES)}")
    if search == "grid":
        ranged = [d.name for d in space if d.is_range()]
        if ranged:
            raise fail(f"space.{ranged[0]}", "is a range, which a grid cannot enumerate: "
                       "use grid/choice values or search: random")
    if search in MODEL_SEARCHES:
        package = MODEL_SEARCHES[search]
        try:
            __import__(package)
        except ImportError:
            raise fail("search", f"= '{search}' needs the {package} package (pip install 'zxvad[tune]')") from None
    return search


def _objective(raw: dict[str, Any], base: Config, fail) -> tuple[str, str]:
    """``(metric, mode)``: a metric training reports, maximised or minimised."""
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise fail("mode", f"= {mode!r}: expected max or min")
    metric = raw.get("metric", "auc/mean")
    if metric not in known_metrics(base):
        raise fail("metric", f"= {metric!r} is not reported by training (known: "
                   f"{', '.join(known_metrics(base))})")
    return metric, mode


def _counts(raw: dict[str, Any], search: str, space: list[Dimension], fail) -> dict[str, int]:
    """samples, seeds, max_concurrent and search_seed, each checked against the search."""
    counts = {}
    for key, default, low in (("samples", 1, 1), ("seeds", 1, 1), ("max_concurrent", 0, 0),
                              ("search_seed", 0, 0)):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise fail(key, f"= {value!r}: expected an integer >= {low}")
        counts[key] = value
    if search in MODEL_SEARCHES:
        if counts["seeds"] > 1:
            raise fail("seeds", f"> 1 needs search: random or grid ({search} proposes each config once)")
        crossed = [d.name for d in space if d.kind == "grid"]
        if crossed:
            raise fail(f"space.{crossed[0]}", f"is a grid, which {search} cannot search: use choice")
    if search == "grid" and counts["samples"] != 1:
        raise fail("samples", "must be 1 with search: grid (use seeds to repeat configurations)")
    return counts


def _resources(raw: Any, fail) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise fail("resources", f"= {raw!r}: expected a mapping with workers, cpus, gpus")
    known = ("workers", "cpus", "gpus")
    for key, value in raw.items():
        if key not in known:
            raise fail(f"resources.{key}", f"is unknown (known: {', '.join(known)})")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail(f"resources.{key}", f"= {value!r}: expected a number >= 0")
    res = Resources(**raw)
    if not isinstance(res.workers, int) or res.workers < 1:
        raise fail("resources.workers", f"= {res.workers!r}: expected an integer >= 1")
    if res.gpus not in (0, 1):
        raise fail("resources.gpus", f"= {res.gpus!r}: expected 0 or 1 (GPUs per worker)")
    if res.cpus <= 0:
        raise fail("resources.cpus", f"= {res.cpus!r}: expected a number > 0")
    return res


def _scheduler(raw: Any, fail) -> Scheduler:
    if raw is None:
        return Scheduler()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise fail("scheduler", f"= {raw!r}: expected asha, fifo or a mapping with type")
    raw = dict(raw)
    kind = raw.pop("type", None)
    if kind not in SCHEDULERS:
        raise fail("scheduler.type", f"= {kind!r}: expected one of {', '.join(SCHEDULERS)}")
    out = Scheduler(kind=kind)
    for key, value in raw.items():
        if key not in ("grace_period", "reduction_factor") or kind != "asha":
            raise fail(f"scheduler.{key}", f"is unknown for {kind}")
        low = 1 if key == "grace_period" else 2
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise fail(f"scheduler.{key}", f"= {value!r}: expected an integer >= {low}")
        setattr(out, key, value)
    return out


def _space(raw: Any, base: Config, fail) -> list[Dimension]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise fail("space", "expected a mapping of config key -> {loguniform|uniform|choice|grid: ...}")
    out = []
    for name, spec in raw.items():
        where = f"space.{name}"
        keys = tuple(k.strip() for k in str(name).split(","))
        for key in keys:
            if key in SEED_KEYS:
                raise fail(where, "is set by seeds: use 'seeds: N' to repeat with N seeds")
            try:
                config_lib.with_values(base, {key: _current(base, key)})
            except ConfigError as err:
                raise fail(where, f"is unknown: {err}") from None
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise fail(where, f"= {spec!r}: expected one of {{{': ..., '.join(KINDS)}: ...}}")
        kind, values = next(iter(spec.items()))
        if kind in ("loguniform", "uniform"):
            if len(keys) != 1:
                raise fail(where, f"joins several keys, which needs choice or grid, not {kind}")
            if not isinstance(_current(base, keys[0]), float):
                raise fail(where, f"is not a float key, so it cannot take a {kind} range: use choice or grid")
            if (not isinstance(values, list) or len(values) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise fail(where, f"{kind} = {values!r}: expected [low, high]")
            lo, hi = float(values[0]), float(values[1])
            if lo >= hi:
                raise fail(where, f"{kind} = {values!r}: empty range (low must be below high)")
            if kind == "loguniform" and lo <= 0:
                raise fail(where, f"loguniform = {values!r}: low must be above 0")
            for value in (lo, hi):
                _check(base, {keys[0]: value}, fail, where)
            out.append(Dimension(keys, kind, [lo, hi]))
            continue
        if not isinstance(values, list) or not values:
            raise fail(where, f"{kind} = {values!r}: empty {kind} (expected a non-empty list)")
        options = []
        for value in values:
            if len(keys) > 1:
                if not isinstance(value, list) or len(value) != len(keys):
                    raise fail(where, f"{kind} option {value!r}: expected a list of {len(keys)} values")
                value = tuple(value)
            options.append(value)
            _check(base, Dimension(keys, kind, []).assign(value), fail, where)
        out.append(Dimension(keys, kind, options))
    return out


def _current(base: Config, key: str) -> Any:
    """The base config's value of ``key``, or None when there is no such key."""
    section, _, name = key.partition(".")
    return getattr(getattr(base, section, None), name, None) if name else None


def _check(base: Config, values: dict[str, Any], fail, where: str) -> None:
    """Type and range check of one option on top of the base config (through zxvad.config)."""
    try:
        config_lib.with_values(base, values)
    except ConfigError as err:
        raise fail(where, f"= {_show(values)}: {err}") from None


def _show(values: dict[str, Any]) -> str:
    return ", ".join(f"{v!r}" for v in values.values())
