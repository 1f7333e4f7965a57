"""Train zxVAD with Ray Train: DDP workers, DALI batches, checkpoints, zero-shot AUC, MLflow.

``python -m zxvad.train [--config NAME|FILE] [--set key=value ...]``

Under ``ray job submit -- python -m zxvad.train ...`` (or with RAY_ADDRESS set) it joins that
cluster; otherwise it starts a local Ray. Everything is checked before any worker starts: the
config, every shard path, the checkpoint store and the MLflow server. Starting the same run again
(same name: ``tracking.run_name``, or by default the experiment plus a hash of the config without
``train.steps``) resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from zxvad import config as config_lib
from zxvad.run import plan as planning
from zxvad.redaction import redact


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zxvad.train", description=__doc__.split("\n\n")[0])
    config_lib.add_arguments(parser)
    parser.add_argument("--fresh", action="store_true",
                        help="start a new run even if one with the same name has checkpoints")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines (they are always in /tmp/ray/session_latest/logs)")
    parser.add_argument("--verify-shards", action="store_true",
                        help="also compare every shard's sha256 with its manifest (reads every byte)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_lib.load(args.config, args.overrides)
        plan = planning.plan_run(cfg, verify_hash=args.verify_shards, fresh=args.fresh)
        if not args.no_mlflow:
            plan = planning.open_tracking(plan)
    except (config_lib.ConfigError, ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2

    # The plan stands: only now torch, Ray and MLflow are imported (seconds on a small machine).
    from zxvad.run import console, launch
    from zxvad.tracking.runs import recorded_status

    console.start_ray(args.verbose)
    print(f"run {plan.name}: {cfg.train.num_workers} worker(s), {cfg.train.steps} steps, "
          f"{'GPU' if cfg.train.use_gpu else 'CPU'}; checkpoints in {redact(cfg.train.storage_path)}", flush=True)
    try:
        with recorded_status(plan.tracking_uri, plan.run_id):  # FAILED or KILLED when it does not finish
            result = launch.launch(plan, verbose=args.verbose)
    except Exception as err:  # Ray wraps worker errors; show the root cause in one line
        if not args.verbose:
            print(f"Ray's full log: {console.ray_logs_dir()} (or rerun with --verbose)", file=sys.stderr)
        permanent = launch.permanent_cause(err)
        if permanent is not None:
            print(f"error: training stopped, not retried: {redact(str(permanent))}", file=sys.stderr)
            return 2
        print(f"error: training failed: {redact(str(err).strip().splitlines()[-1])}", file=sys.stderr)
        return 1
    print(console.summary(result, cfg, plan.name, plan.run_id, plan.tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
