"""The driver's plan of a training run: inputs checked, run named, storage checked, MLflow opened.

Everything here runs before Ray starts and imports no torch, Ray or MLflow (MLflow only when the
run is opened, after every other check), so a bad config, shard set, checkpoint store or
tracking server is one clear error in a fraction of a second. ``tests/test_imports.py`` holds
this module to that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shards.storage import is_s3, parse_s3_url
from zxvad import config as config_lib
from zxvad.config import Config
from zxvad.data.shardset import ShardInfo, check_shards, manifest_digest, verify_shard_set
from zxvad.tracking import runs as tracking_runs


@dataclass
class Inputs:
    """The shards a run reads, resolved and checked once on the driver, before any cluster work;
    the workers' loaders take them as they are (``zxvad.data.checked_shards``)."""

    train: list[ShardInfo]
    donors: list[ShardInfo]
    targets: dict[str, list[ShardInfo]]
    # (absolute spec, fraction) of each set: what a worker re-checks when DALI fails
    sets: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class RunPlan:
    """What the driver hands to :func:`zxvad.run.launch.launch`: a validated config, its checked
    inputs, the run's name and (once opened) its MLflow run."""

    cfg: Config
    inputs: Inputs
    name: str
    run_id: str = ""  # empty: no MLflow
    tracking_uri: str = ""


def plan_run(cfg: Config, *, verify_hash: bool = False, fresh: bool = False) -> RunPlan:
    """Check a validated config's inputs and checkpoint store and name the run; no Ray, no MLflow.

    Args:
        verify_hash: also compare every shard's sha256 with its manifest (reads every byte).
        fresh: start a new run (a time-stamped name) instead of resuming one of the same name.
    """
    inputs = resolve_inputs(cfg, verify_hash=verify_hash)
    check_storage(cfg)
    name = default_run_name(cfg)
    if fresh:
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunPlan(cfg, inputs, name)


def open_tracking(plan: RunPlan, *, parent_run_id: str = "", tags: dict[str, str] | None = None) -> RunPlan:
    """The plan with its MLflow run found or created (a sweep's child when ``parent_run_id``),
    the shard sets logged as datasets and ``tags`` set."""
    uri, run_id = tracking_runs.open_run(plan.cfg, plan.name, parent_run_id=parent_run_id,
                                         datasets=dataset_refs(plan.cfg))
    if tags:
        tracking_runs.tag_trial(uri, run_id, tags)
    return dataclasses.replace(plan, run_id=run_id, tracking_uri=uri)


def resolve_inputs(cfg: Config, verify_hash: bool = False) -> Inputs:
    """Every shard set of the config resolved (fraction applied), checked against its manifest
    (sizes and index offsets; every sha256 too with ``verify_hash``) and checked for the loaders
    (indexes, clip metadata, a codec the workers' decoder reads); one clear error otherwise."""
    sets = []

    def resolve(spec: str, fraction: float = 1.0) -> list[ShardInfo]:
        sets.append((spec if is_s3(spec) else os.path.abspath(spec), fraction))
        paths = verify_shard_set(spec, fraction, full_hash=verify_hash)
        return check_shards(paths, gpu=cfg.train.use_gpu)

    if not cfg.data.train_shards:
        raise ValueError("config key 'data.train_shards' is empty: name G's training shards "
                         "(a folder with manifest.json or an s3:// prefix)")
    train = resolve(cfg.data.train_shards, cfg.data.fraction)
    donors = resolve(cfg.data.donor_shards) if cfg.data.donor_shards else train
    targets = {name: resolve(spec) for name, spec in cfg.eval.targets.items()}
    return Inputs(train, donors, targets, sets)


def dataset_refs(cfg: Config) -> list[dict]:
    """The shard sets a run reads, as MLflow datasets: context, name, source, manifest digest."""
    sets = [("training", cfg.data.train_shards, cfg.data.fraction)]
    if cfg.data.donor_shards:
        sets.append(("donor", cfg.data.donor_shards, 1.0))
    sets += [(f"target:{name}", spec, 1.0) for name, spec in cfg.eval.targets.items()]
    out: dict[tuple, dict] = {}
    for context, spec, fraction in sets:
        name = spec.rstrip("/").rsplit("/", 1)[-1] + ("" if fraction >= 1 else f"@{fraction:g}")
        source = spec if is_s3(spec) else os.path.abspath(spec)
        ref = {"context": context, "name": name, "source": source, "digest": manifest_digest(spec, fraction)}
        same = out.setdefault((name, source, ref["digest"]), ref)
        if same is not ref:  # MLflow keeps one input per dataset: one set in two roles joins them
            same["context"] += f",{context}"
    return list(out.values())


# Keys that may change between a run and its resume: more steps, a new experiments' artifact root.
NOT_IN_RUN_NAME = ("train.steps", "tracking.artifact_location")


def default_run_name(cfg: Config) -> str:
    """Stable per config, so that rerunning the same command resumes it (steps may grow)."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    old_name = {new: old for old, new in config_lib.RENAMED_KEYS.items()}  # runs started before resume
    flat = {old_name.get(k, k): v for k, v in cfg.flat().items() if k not in NOT_IN_RUN_NAME}
    digest = hashlib.sha256(repr(sorted(flat.items())).encode()).hexdigest()[:8]
    return f"{cfg.tracking.experiment}-{digest}"


def check_storage(cfg: Config) -> None:
    """Fail before Ray when the checkpoint store cannot be written."""
    path = cfg.train.storage_path
    if not is_s3(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise ValueError(f"config key 'train.storage_path' = {path!r}: not writable")
        return
    from shards import s3  # boto3: only for an s3:// store

    if cfg.train.s3_endpoint:
        os.environ.setdefault("AWS_ENDPOINT_URL", cfg.train.s3_endpoint)
    try:
        bucket, _ = parse_s3_url(path)
        s3.check_bucket(s3.client(), bucket)
    except (ValueError, s3.S3Error) as err:
        raise ValueError(f"config key 'train.storage_path' = {path!r}: {err}") from None
