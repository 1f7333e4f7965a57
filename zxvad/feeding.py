"""Keeping the training step fed: the CPUs a Ray worker reserves for its loaders, and how long
each step waited for its batch.

A GPU step takes a fraction of a second, so the DALI loaders' CPU threads decide the speed of
the whole run. ``worker_resources`` asks Ray for those threads' CPUs on every worker;
``StepTimer`` splits the loop's wall time into waiting for data and the rest, so the training
log and MLflow show at once whether the step is starved (docs/loader.md reads the numbers).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

# The two loaders of a worker (clips, donors) and the process that runs the step.
LOADERS_PER_WORKER = 2


def worker_resources(cpus_per_worker: float, loader_threads: int, use_gpu: bool) -> dict[str, float]:
    """Ray Train's ``resources_per_worker``.

    Args:
        cpus_per_worker: ``train.cpus_per_worker``; 0 picks the default.
        loader_threads: ``data.loader_threads``, DALI threads of each loader.
        use_gpu: the workers train on a GPU (Ray adds one GPU per worker).

    Returns:
        ``{"CPU": n}``: on a GPU node by default the loaders' threads plus one for the step,
        since Ray would otherwise reserve no CPU at all for a GPU worker; on CPUs one per
        worker, as the demo's 2 workers on 2 cores need.
    """
    if cpus_per_worker < 0:
        raise ValueError(f"train.cpus_per_worker {cpus_per_worker!r}: expected >= 0 (0: default)")
    if cpus_per_worker:
        return {"CPU": float(cpus_per_worker)}
    return {"CPU": float(LOADERS_PER_WORKER * loader_threads + 1 if use_gpu else 1)}


class StepTimer:
    """Wall time of the training loop between two reports, split into data wait and compute.

    ``fetch()`` wraps the wait for the next batch; everything else in the window (the step, the
    device finishing its queued work, logging) is compute. ``summary`` waits for the device
    first (``sync``) so that asynchronous GPU work lands in the window that queued it.
    ``restart`` drops time that is neither (a checkpoint or an evaluation).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self.restart()

    def restart(self) -> None:
        self._began = self._clock()
        self._wait = 0.0
        self._steps = 0

    @contextmanager
    def fetch(self) -> Iterator[None]:
        began = self._clock()
        try:
            yield
        finally:
            self._wait += self._clock() - began
            self._steps += 1

    def summary(self, sync: Callable[[], None] | None = None) -> dict[str, float]:
        """Per step means over the window since the last summary (or restart), then a new window.

        Returns:
            ``data_wait_s`` and ``step_compute_s`` (seconds per step) and ``data_wait_share``
            (wait over the window's wall time, 0..1); empty when no step ran.
        """
        if sync is not None:
            sync()
        wall = self._clock() - self._began
        steps, wait = self._steps, self._wait
        self.restart()
        if steps == 0:
            return {}
        return {"data_wait_s": wait / steps, "step_compute_s": max(wall - wait, 0.0) / steps,
                "data_wait_share": wait / wall if wall > 0 else 0.0}


def device_sync(device) -> Callable[[], None] | None:
    """What :meth:`StepTimer.summary` waits on for ``device``: CUDA's queue, nothing on a CPU."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    return lambda: torch.cuda.synchronize(device)
