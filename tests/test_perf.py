"""The speed options of the step (lazy losses, profiling hook, fused Adam, channels_last, compile),
`zxvad.bench step`, the GPU check's CPU path and the pinned host-to-device copy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zxvad import config
from zxvad.bench import step as bench_step
from zxvad.step import StepLosses, build_state, train_step

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.image_size=64", "model.width=4", "model.memory_dim=32", "model.memory_items=8",
        "model.disc_width=4", "model.backbone=mnasnet1_0", "train.batch_size=2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_cfg(*overrides):
    return config.load("demo", [*TINY, *overrides])


def run_steps(cfg, steps=2, device="cpu"):
    torch.manual_seed(0)
    state = build_state(cfg, device)
    clips, donors = bench_step.synthetic_batch(2, cfg.model.T, cfg.model.image_size, device, 0)
    outs = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        outs.append(dict(train_step(state, clips, donors, generator=torch.Generator().manual_seed(step))))
    return state, outs


def test_step_losses_read_all_terms_in_one_go_and_only_when_asked():
    terms = {"a": torch.tensor(1.5), "b": torch.tensor(2, dtype=torch.int64)}
    losses = StepLosses(terms)
    assert losses._floats is None and list(losses) == ["a", "b"] and len(losses) == 2
    assert losses.tensors()["a"] is terms["a"]
    assert losses._floats is None  # iterating and tensors() read nothing back
    assert losses["b"] == 2.0 and isinstance(losses["a"], float)
    losses["steps_per_s"] = 3.0
    assert dict(losses) == {"a": 1.5, "b": 2.0, "steps_per_s": 3.0}
    assert losses == {"a": 1.5, "b": 2.0, "steps_per_s": 3.0}


def test_profiling_hook_sees_every_section_in_order_and_is_off_by_default():
    torch.manual_seed(0)
    state = build_state(tiny_cfg(), "cpu")
    assert state.lap is None
    names = []
    state.lap = names.append
    clips, donors = bench_step.synthetic_batch(2, 4, 64, "cpu", 0)
    train_step(state, clips, donors)
    assert names == ["start", "g_forward", "d", "optimizers", "o", "augment", "n", "optimizers",
                     "g_backward", "optimizers"]
    timer = bench_step.SectionTimer("cpu")
    state.lap = timer
    train_step(state, clips, donors)
    sections = timer.collect()
    assert set(sections) == set(bench_step.SECTIONS) and all(v > 0 for v in sections.values())


def test_fused_adam_is_used_and_matches_the_per_tensor_loop():
    # raw queries: with centred ones the hard shrinkage keeps or cuts weights next to lambda, so
    # float rounding of the two Adams flips a few weights and the comparison measures that instead
    raw = "model.memory_query=raw"
    fused_state, fused = run_steps(tiny_cfg(raw), steps=3)
    loop_state, loop = run_steps(tiny_cfg(raw, "train.fused_adam=false"), steps=3)
    assert fused_state.opt_g.param_groups[0]["fused"] is True
    assert not loop_state.opt_g.param_groups[0]["fused"]
    for a, b in zip(fused, loop):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k
    for p, q in zip(fused_state.G.parameters(), loop_state.G.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_channels_last_stores_nhwc_and_computes_the_same():
    cl_state, cl = run_steps(tiny_cfg("train.channels_last=true"))
    _, plain = run_steps(tiny_cfg())
    assert cl_state.G.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert cl_state.D.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(cl, plain):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k


def test_compile_keeps_state_dict_keys_and_losses(monkeypatch):
    # aot_eager traces G, D and N with dynamo and AOT autograd as inductor does, minus the codegen
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: original(self, backend="aot_eager", **kw))
    torch._dynamo.reset()
    compiled_state, compiled = run_steps(tiny_cfg("train.compile=true"))
    _, eager = run_steps(tiny_cfg())
    assert compiled_state.G._compiled_call_impl is not None
    assert list(compiled_state.state_dict()["G"]) == list(build_state(tiny_cfg(), "cpu").state_dict()["G"])
    for a, b in zip(compiled, eager):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k


def test_new_train_keys_are_type_checked():
    with pytest.raises(config.ConfigError, match="train.compile"):
        config.load("demo", ["train.compile=sometimes"])
    cfg = config.load("paper")
    assert cfg.train.fused_adam and not cfg.train.compile


def test_peak_table_knows_h200_and_returns_none_for_cpu(monkeypatch):
    assert bench_step.peak_tflops("cpu") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench_step.peak_tflops("cuda") == 989.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    assert bench_step.peak_tflops("cuda") == 125.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert bench_step.peak_tflops("cuda") is None


def test_bench_step_prints_its_figures_as_the_last_json_line(capsys):
    from zxvad.bench.__main__ import main

    args = ["step", "--config", "demo", *[a for o in TINY for a in ("--set", o)], "--steps", "1",
            "--warmup", "1", "--repeats", "2", "--threads", "1"]
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["batch"] == 2 and figures["size"] == 64
    assert figures["step_s"] > 0 and figures["samples_per_s"] == pytest.approx(2 / figures["step_s"], rel=0.01)
    assert set(figures["sections_s"]) == set(bench_step.SECTIONS)
    assert sum(figures["sections_s"].values()) <= figures["step_s"] * 1.05
    assert figures["gflops_per_sample"] > 0 and figures["peak_bf16_tflops"] is None
    assert "reference_s" not in figures  # only at paper widths and batch 8


def test_step_flops_count_g_forward_and_more():
    from zxvad.models import build_generator, generator_gmacs

    cfg = tiny_cfg()
    torch.manual_seed(0)
    state = build_state(cfg, "cpu")
    clips, donors = bench_step.synthetic_batch(2, 4, 64, "cpu", 0)
    flops = bench_step.step_flops(state, clips, donors, None)
    g_forward = 2 * generator_gmacs(build_generator(cfg.model), 64, 4) * 1e9 * 2  # FLOPs, batch 2
    assert flops > 3 * g_forward  # G's backward alone doubles its forward; D, N and R add more


def _torch_only_site(tmp_path: Path) -> Path:
    """A site folder with torch, its own requirements and the GPU check's core wheels, nothing else."""
    import importlib.metadata as md
    import re

    from zxvad.bench.gpu_check import CORE_WHEELS

    site_packages = Path(torch.__file__).parents[1]
    keep = {"torch", "torchgen", "functorch", "triton", "optree", "filelock", "typing_extensions",
            "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "setuptools",
            "_distutils_hack", "pkg_resources", "cuda", *CORE_WHEELS}
    site = tmp_path / "site"
    (site / "nvidia").mkdir(parents=True)
    for entry in site_packages.iterdir():
        name = entry.name.split("-")[0].split(".")[0]
        if name in keep or (entry.suffix == ".so" and name in keep):
            (site / entry.name).symlink_to(entry)
    for dist in ("torch", *CORE_WHEELS.values()):  # metadata, so version checks still work
        for meta in site_packages.glob(f"{re.sub('[-_]', '[-_]', dist)}-*.dist-info"):
            if not (site / meta.name).exists():
                (site / meta.name).symlink_to(meta)
    for entry in (site_packages / "nvidia").iterdir():  # CUDA libraries yes, DALI no
        if entry.name != "dali":
            (site / "nvidia" / entry.name).symlink_to(entry)
    assert md.version("torch")
    return site


def test_gpu_check_dry_run_on_a_torch_only_python(tmp_path):
    """The check's CPU path, in a Python that sees torch and the core wheels only: no Ray, DALI,
    MLflow, webdataset, scipy or sklearn (scipy gets the placeholder)."""
    site = _torch_only_site(tmp_path)
    out = tmp_path / "check.json"
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
            "from zxvad.bench.gpu_check import main; sys.exit(main(sys.argv[3:]))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(site), str(ROOT), "--device", "cpu",
         "--dry-run", "--out", str(out), "--site", str(tmp_path / "unpacked"),
         "--wheels", str(tmp_path / "no-wheels"), "--only", "step_b8", "step_max_batch",
         "bf16_vs_fp32", "synthesis_o", "inference"],
        capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["wheels"]["scipy"].startswith("placeholder")
    assert "pynvml" in data["wheels"]["missing"]  # optional: energy falls back to nvidia-smi
    sections = data["sections"]
    assert {k: v["status"] for k, v in sections.items()} == dict.fromkeys(
        ["step_b8", "step_max_batch", "bf16_vs_fp32", "synthesis_o", "inference"], "ok"), sections
    assert sections["step_b8"]["batch"] == 2 and sections["step_b8"]["step_s"] > 0
    assert sections["step_max_batch"]["batch"] == 4  # the dry run's cap
    assert sections["bf16_vs_fp32"]["within_tolerance"] is True  # amp is a no-op on the CPU
    assert sections["synthesis_o"]["mask_agreement_with_cpu"] == 1.0
    assert sections["inference"]["fp32_batch_4_fps"] > 0
    for module in ("ray", "nvidia.dali", "mlflow", "webdataset", "sklearn"):
        probe = subprocess.run([sys.executable, "-I", "-S", "-c",
                                f"import sys; sys.path[:0] = [sys.argv[1]]; import {module}",
                                str(site)], capture_output=True, env=env)
        assert probe.returncode != 0, f"{module} is visible in the torch-only Python"


def test_gpu_check_times_out_a_slow_section(tmp_path):
    from zxvad.bench.gpu_check import Report

    report = Report(tmp_path / "r.json", {"device": "cpu"})
    report.section("slow", lambda: __import__("time").sleep(5) or {}, limit=1)
    report.section("fine", lambda: {"x": 1}, limit=5)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["sections"]["slow"]["status"] == "timeout" and data["sections"]["slow"]["wall_s"] < 3
    assert data["sections"]["fine"] == {"status": "ok", "x": 1, "wall_s": data["sections"]["fine"]["wall_s"]}


def test_gpu_check_without_wheels_names_what_is_missing(tmp_path, monkeypatch):
    from zxvad.bench import gpu_check

    monkeypatch.setattr(gpu_check, "CORE_WHEELS", {"no_such_module_zx": "no-such-dist"})
    with pytest.raises(RuntimeError, match="no wheel in .* for no_such_module_zx: run `make gpu-wheels`"):
        gpu_check.install_wheels(tmp_path / "wheels", tmp_path / "site")


def test_to_device_keeps_cpu_batches_as_they_are():
    pytest.importorskip("nvidia.dali")
    from zxvad.data.pipelines import to_device

    x = torch.rand(2, 3)
    assert to_device(x, torch.device("cpu")) is x


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_to_device_pins_and_copies_to_cuda():
    from zxvad.data.pipelines import to_device

    x = torch.rand(2, 3)
    y = to_device(x, torch.device("cuda"))
    torch.cuda.synchronize()
    assert y.is_cuda and torch.equal(y.cpu(), x)
