"""The names a run's metrics and MLflow tags are logged under, defined once.

This module imports nothing, so the driver (before torch), the workers, ``zxvad.metrics``,
``zxvad.tracking``, ``zxvad.serving`` and ``tune`` all read the same names. What each summary
metric means is written in :mod:`zxvad.metrics`, which computes them.
"""

# Summary metrics of an evaluation: "<head>/<target>" and "<head>/mean" (baselines: "<head>/<name>/<target>").
AUC, BASELINE, GAIN, MEAN = "auc", "auc_baseline", "auc_gain", "mean"
PATCH, PATCH_BASELINE, PATCH_GAIN = "auc_patch", "auc_patch_baseline", "auc_patch_gain"
EFFICIENCY = "efficiency"  # "efficiency/<figure>": parameters, GMACs, checkpoint MB, FPS, joules
LOSS = "loss"  # "loss/<term>": each loss term the training step returns (l_*)

# MLflow tags and names.
RUN_NAME_TAG = "zxvad.run_name"
SWEEP_TAG = "zxvad.sweep"
ROLE_TAG = "zxvad.role"  # "sweep" on the sweep-level run, which holds no training
CONFIG_TAG = "zxvad.config_id"
TRIAL_TAG = "zxvad.trial_id"
SEED_TAG = "zxvad.seed"
ATTEMPT_METRIC = "sweep/attempt"  # logged at each start of a trial: a resumed trial logs 2
GENERATOR_MODEL = "generator"  # the final G: runs:/<run_id>/generator
CHECKPOINT_ARTIFACT = "checkpoint"  # inside a scoring model: G's weights, config, calibration
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: a sweep trial's run -> the sweep run


def is_auc(key: str) -> bool:
    """G's AUC of a target or their mean (``auc/<target>``, ``auc/mean``)."""
    return key.startswith(f"{AUC}/")


def is_auc_or_gain(key: str) -> bool:
    """G's AUC or its gain over the trivial baselines, per target or the mean."""
    return key.startswith((f"{AUC}/", f"{GAIN}/"))


def efficiency_metrics(figures: dict) -> dict:
    """``{"parameters": 8.7e6, ...}`` -> ``{"efficiency/parameters": 8.7e6, ...}``."""
    return {f"{EFFICIENCY}/{k}": v for k, v in figures.items()}


def loss_metric(key: str) -> str:
    """Loss terms (``l_*``) under ``loss/``; everything else by its own name."""
    return f"{LOSS}/{key}" if key.startswith("l_") else key
