"""A training run, split by the process that runs each part.

- :mod:`zxvad.run.plan` (the driver, before any cluster work): the config's inputs checked, the
  run named, the checkpoint store checked, the MLflow run opened. It imports no torch, Ray or
  MLflow, so a bad input is reported in a fraction of a second.
- :mod:`zxvad.run.launch` (the driver, once the plan stands): the Ray Train plumbing, that is the
  TorchTrainer, its failure policy, storage retries and checkpoint ranking; :func:`launch.launch`
  is the one door through which ``python -m zxvad.train`` and a Tune trial start a run.
- :mod:`zxvad.run.worker` (each Ray Train worker): loaders, the training loop, checkpoints,
  evaluations and rank 0's MLflow logging.
- :mod:`zxvad.run.console` (the driver's terminal): which of Ray's streamed lines a user sees,
  and the closing summary.
"""
