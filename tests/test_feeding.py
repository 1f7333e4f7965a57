"""zxvad.feeding: Ray resources for the loaders' CPUs, and the per-step data-wait timing."""

import pytest

from zxvad.feeding import StepTimer, device_sync, worker_resources


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_step_timer_splits_the_window_into_wait_and_compute():
    clock = FakeClock()
    timer = StepTimer(clock)
    for wait, compute in [(0.3, 0.1), (0.1, 0.1), (0.2, 0.2)]:
        with timer.fetch():
            clock.now += wait
        clock.now += compute
    synced = []
    out = timer.summary(lambda: synced.append(True) or setattr(clock, "now", clock.now + 0.2))
    assert synced == [True]  # the device's queued work lands in this window
    assert out["data_wait_s"] == pytest.approx(0.2)
    assert out["step_compute_s"] == pytest.approx((0.4 + 0.2) / 3)
    assert out["data_wait_share"] == pytest.approx(0.6 / 1.2)
    assert timer.summary() == {}  # a new window, no step in it yet


def test_step_timer_restart_drops_checkpoint_time():
    clock = FakeClock()
    timer = StepTimer(clock)
    with timer.fetch():
        clock.now += 1.0
    clock.now += 50.0  # a checkpoint and an evaluation
    timer.restart()
    with timer.fetch():
        clock.now += 0.5
    clock.now += 0.5
    assert timer.summary()["data_wait_share"] == pytest.approx(0.5)


def test_worker_resources_reserve_the_loader_threads_on_a_gpu():
    assert worker_resources(0, loader_threads=2, use_gpu=False) == {"CPU": 1.0}  # the demo: 2 workers, 2 cores
    assert worker_resources(0, loader_threads=2, use_gpu=True) == {"CPU": 5.0}  # clips + donors + the step
    assert worker_resources(8, loader_threads=2, use_gpu=True) == {"CPU": 8.0}
    with pytest.raises(ValueError, match="train.cpus_per_worker"):
        worker_resources(-1, loader_threads=2, use_gpu=True)
    assert device_sync("cpu") is None


def test_trainer_asks_ray_for_those_cpus(tmp_path):
    from zxvad import config as config_lib
    from zxvad.run.launch import build_trainer, make_job
    from zxvad.run.plan import Inputs

    cfg = config_lib.load("demo", [f"train.storage_path={tmp_path}", "train.use_gpu=true", "data.loader_threads=3"])
    trainer = build_trainer(make_job(cfg, Inputs([], [], {})), "resources")
    scaling = trainer.scaling_config
    assert scaling.num_cpus_per_worker == 7 and scaling.num_gpus_per_worker == 1


def test_a_sweeps_resources_reach_each_trials_workers(tmp_path):
    from tune import space

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: res\nbase: demo\nspace: {loss.alpha_n: {choice: [0.5, 1.0]}}\n"
                          "resources: {workers: 2, cpus: 6, gpus: 1}\n")
    sweep = space.load(str(sweep_file))
    assert sweep.base.train.cpus_per_worker == 6 and sweep.base.train.num_workers == 2
    assert worker_resources(sweep.base.train.cpus_per_worker, sweep.base.data.loader_threads,
                            sweep.base.train.use_gpu) == {"CPU": 6.0}
