"""Ray Tune sweeps over zxVAD training runs and the MLflow comparison of their AUCs.

- ``tune.space``: the sweep file (schema, validation before Ray, the list of trial variants).
- ``tune.trial``: what runs inside Ray (the Tune function that fits a TorchTrainer, callbacks).
- ``tune.sweep``: ``python -m tune.sweep --config FILE.yaml``.
- ``tune.compare``: ``python -m tune.compare --experiment NAME`` (tables like the paper's 4 and 5).

This package's name shadows nothing in Ray: Ray's own is always imported as ``ray.tune``.
"""
