"""MLflow: where runs are stored, their life, what they log and what is read back from them.

One run per training run, resumed by name, no secrets (:mod:`zxvad.redaction`). The driver opens
(or finds) the run before any Ray work, so an unreachable tracking server fails fast, and logs the
shard sets it reads as MLflow datasets; rank 0 then logs into that run by id, with system metrics,
and logs G as a model with a signature (registered when ``tracking.register_as`` names it). A
sweep is one parent run with one child run per trial (``mlflow.parentRunId``); ``tune.compare``
reads them back. The names runs are logged under live in :mod:`zxvad.names`.

- :mod:`zxvad.tracking.store`: the tracking URI, a server's health, experiments and artifact roots
- :mod:`zxvad.tracking.runs`: the run lifecycle: open or find a run, its status, trial tags, the sweep's run
- :mod:`zxvad.tracking.logger`: what a run logs: rank 0's step metrics, evaluations, the registered G's tags
- :mod:`zxvad.tracking.read`: the read side: training runs for ``tune.compare``, metric histories, G loaded back

Every module imports MLflow inside its functions only, so the driver imports them before its checks.
"""
