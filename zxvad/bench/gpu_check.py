"""The GPU check: the paper preset's speed and numerics on a CUDA machine that holds only PyTorch.

    make gpu-wheels                       # once, with internet: the wheels into .gpu-wheels/
    make gpu-check                        # on the GPU machine: writes gpu-check.json
    python -m zxvad.bench.gpu_check --device cpu --dry-run --out /tmp/c.json   # the path, tiny

The machine has Python 3.12 and torch, nothing else, and no internet. What the method core
imports (kornia, kornia-rs, pytorch-metric-learning, torchvision, pillow, numpy, pyyaml, tqdm,
packaging, nvidia-ml-py) comes as wheels in ``--wheels``; each one whose module is missing is
unpacked into ``--site`` and put on ``sys.path`` (a wheel is a zip laid out as site-packages,
so no pip is needed). scipy (35 MB) would break the 64 MiB limit: pytorch-metric-learning
imports ``scipy.stats`` and ``scipy.special`` at module level but its ArcFace never calls
them, so where scipy is missing a placeholder package stands in whose every attribute raises.

Sections, each under its own time limit (SIGALRM) inside a total budget, and each written to
the JSON as soon as it ends (a killed run keeps what it finished):
    step_b8            bench step, paper preset 256x256, batch 8, bf16
    step_max_batch     the largest batch (doubling from 16) that fits, then bench step there
    step_b8_compile    as step_b8 with torch.compile of G, D and N
    bf16_vs_fp32       20 steps from the same seed with bf16 autocast and in float32
    synthesis_o        O on the GPU (R's forward, masks, paste), and its masks against the CPU's
    inference          G's frames/s at batch 1 and 32 (bf16 and float32), NVML energy per frame
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
import zipfile
from pathlib import Path

# module -> distribution of every wheel the core needs beyond torch (see `make gpu-wheels`)
CORE_WHEELS = {"kornia": "kornia", "kornia_rs": "kornia-rs",
               "pytorch_metric_learning": "pytorch-metric-learning", "torchvision": "torchvision",
               "PIL": "pillow", "numpy": "numpy", "yaml": "pyyaml", "tqdm": "tqdm",
               "packaging": "packaging", "pynvml": "nvidia-ml-py"}
OPTIONAL = ("pynvml",)  # energy falls back to nvidia-smi
SCIPY_PLACEHOLDER = '''"""Placeholder written by zxvad.bench.gpu_check: scipy is not installed on this machine."""
def __getattr__(name):
    raise ImportError(f"scipy is not installed here ({__name__}.{name} was asked for)")
'''
LOSS_TERMS = ("l_rec", "l_g", "l_d", "l_n_total")
BF16_TOLERANCE = {"rel": 0.05, "abs": 0.02}  # on each term's mean over the 20 steps
TIME_LIMITS_S = {"step_b8": 45, "step_max_batch": 75, "step_b8_compile": 120, "bf16_vs_fp32": 45,
                 "synthesis_o": 30, "inference": 40}
BUDGET_S = 330  # under 6 minutes, imports and unpacking included


class SectionTimeout(Exception):
    pass


def install_wheels(wheels: Path, site: Path) -> dict:
    """Unpack the wheel of every missing core module into ``site``; scipy gets a placeholder."""
    site.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    available = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    report = {"unpacked": [], "present": [], "missing": []}
    for module, dist in CORE_WHEELS.items():
        if importlib.util.find_spec(module) is not None:
            report["present"].append(module)
            continue
        prefix = dist.replace("-", "_").lower() + "-"
        match = [w for w in available if w.name.lower().startswith(prefix)]
        if not match:
            report["missing"].append(module)
            continue
        with zipfile.ZipFile(match[-1]) as archive:
            archive.extractall(site)
        report["unpacked"].append(match[-1].name)
    if importlib.util.find_spec("scipy") is None:
        for name in ("__init__", "stats", "special"):
            (site / "scipy").mkdir(exist_ok=True)
            (site / "scipy" / f"{name}.py").write_text(SCIPY_PLACEHOLDER)
        report["scipy"] = "placeholder (ArcFace never calls scipy)"
    importlib.invalidate_caches()
    hard = [m for m in report["missing"] if m not in OPTIONAL]
    if hard:
        raise RuntimeError(f"no wheel in {wheels} for {', '.join(hard)}: run `make gpu-wheels` "
                           "where there is internet and carry the folder")
    return report


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (checked between Python ops)."""
    def expire(signum, frame):
        raise SectionTimeout(f"over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """The JSON file, rewritten whole (via a temporary file) after every section."""

    def __init__(self, path: Path, header: dict):
        self.path, self.data = path, {**header, "sections": {}}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)

    def section(self, name: str, fn, limit: float) -> None:
        start = time.perf_counter()
        try:
            with time_limit(limit):
                entry = {"status": "ok", **fn()}
        except SectionTimeout as err:
            entry = {"status": "timeout", "error": str(err)}
        except Exception as err:  # one failing section must not lose the others
            entry = {"status": "error", "error": f"{type(err).__name__}: {err}",
                     "trace": traceback.format_exc(limit=4)}
        entry["wall_s"] = round(time.perf_counter() - start, 2)
        self.data["sections"][name] = entry
        self.write()
        print(f"[{name}] {entry['status']} in {entry['wall_s']} s", file=sys.stderr, flush=True)


class Energy:
    """GPU energy in joules: NVML's total-energy counter, else nvidia-smi power samples."""

    def __init__(self, index: int):
        self.source, self.handle, self._samples, self._thread = None, None, [], None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.nvml, self.source = pynvml, "nvml"
        except Exception:  # no wheel, no library or no counter on this GPU
            import shutil

            if shutil.which("nvidia-smi"):
                self.source, self.index = "nvidia-smi", index

    def _power_w(self) -> float:
        import subprocess

        out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=power.draw",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5).stdout
        return float(out.strip().splitlines()[0])

    def start(self) -> None:
        import threading

        if self.source == "nvml":
            self._start_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        elif self.source == "nvidia-smi":
            self._stop, self._samples = threading.Event(), []

            def sample():
                while not self._stop.is_set():
                    self._samples.append((time.perf_counter(), self._power_w()))
                    self._stop.wait(0.1)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()

    def stop(self) -> float | None:
        if self.source == "nvml":
            return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._start_mj) / 1000
        if self.source == "nvidia-smi":
            self._stop.set()
            self._thread.join()
            s = self._samples
            return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(s, s[1:])) or None
        return None


def sizes(dry_run: bool) -> dict:
    """The paper preset, or a tiny config through the same code (``--dry-run``)."""
    if not dry_run:
        return {"config": "paper", "overrides": ["train.amp=true"], "batch": 8, "steps": 5,
                "warmup": 3, "repeats": 3, "agreement_steps": 20, "max_batch_cap": 1024,
                "infer_batches": (1, 32), "infer_iters": 50}
    return {"config": "demo", "overrides": ["model.image_size=64", "model.width=4",
                                            "model.memory_dim=32", "model.memory_items=8",
                                            "model.disc_width=4", "model.backbone=mnasnet1_0",
                                            "model.backbone_size=0", "train.amp=true"],
            "batch": 2, "steps": 1, "warmup": 1, "repeats": 1, "agreement_steps": 2,
            "max_batch_cap": 4, "infer_batches": (1, 4), "infer_iters": 2}


class Checks:
    """The sections of the check, each a method returning its JSON-ready figures."""

    def __init__(self, plan: dict, device):
        import torch

        from zxvad.bench import step as bench

        self.plan, self.device, self.bench = plan, device, bench
        self.gpu = device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.gpu else (lambda: None)

    def cfg(self, *extra):
        from zxvad import config

        return config.load(self.plan["config"], [*self.plan["overrides"], *extra])

    def bench_step(self, batch, *extra) -> dict:
        c = self.cfg(f"train.batch_size={batch}", *extra)
        result = self.bench.measure(c, self.device, batch, self.plan["steps"], self.plan["warmup"],
                                    self.plan["repeats"])
        achieved = result["flops_per_step"] / result["step_s"] / 1e12
        peak = self.bench.peak_tflops(self.device)
        return {"batch": batch, "size": c.model.image_size, "compile": c.train.compile,
                "step_s": round(result["step_s"], 4),
                "samples_per_s": round(batch / result["step_s"], 2),
                "sections_s": {k: round(v, 4) for k, v in result["sections_s"].items()},
                "warmup_s": round(result["warmup_s"], 2),
                "peak_memory_mb": round(result["peak_memory_mb"], 1),
                "gflops_per_sample": round(result["flops_per_step"] / batch / 1e9, 2),
                "achieved_tflops": round(achieved, 3), "peak_bf16_tflops": peak,
                "share_of_peak": round(achieved / peak, 4) if peak else None}

    def fits(self, batch) -> bool:
        import torch

        from zxvad.step import build_state, train_step

        state = clips = donors = None
        try:
            state = build_state(self.cfg(f"train.batch_size={batch}"), self.device)
            clips, donors = self.bench.synthetic_batch(batch, state.cfg.model.T,
                                                  state.cfg.model.image_size, self.device, 0)
            dict(train_step(state, clips, donors))
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            state = clips = donors = None
            if self.gpu:
                torch.cuda.empty_cache()

    def max_batch(self) -> dict:
        batch = self.plan["batch"]
        while batch * 2 <= self.plan["max_batch_cap"] and self.fits(batch * 2):
            batch *= 2
        return self.bench_step(batch)

    def agreement(self) -> dict:
        import torch

        from zxvad.step import build_state, train_step

        runs = {}
        for amp in (True, False):
            torch.manual_seed(0)
            state = build_state(self.cfg(f"train.amp={str(amp).lower()}",
                                    f"train.batch_size={self.plan['batch']}"), self.device)
            generator = torch.Generator(device=self.device).manual_seed(0)
            terms = {k: [] for k in LOSS_TERMS}
            for step in range(self.plan["agreement_steps"]):
                clips, donors = self.bench.synthetic_batch(self.plan["batch"], state.cfg.model.T,
                                                      state.cfg.model.image_size, self.device, step)
                torch.manual_seed(1000 + step)  # g's draws are the same in both runs
                out = train_step(state, clips, donors, generator=generator)
                for k in LOSS_TERMS:
                    terms[k].append(out[k])
            runs["bf16" if amp else "fp32"] = {k: sum(v) / len(v) for k, v in terms.items()}
        diff = {k: abs(runs["bf16"][k] - runs["fp32"][k]) for k in LOSS_TERMS}
        ok = all(diff[k] <= BF16_TOLERANCE["abs"] + BF16_TOLERANCE["rel"] * abs(runs["fp32"][k])
                 for k in LOSS_TERMS)
        return {"steps": self.plan["agreement_steps"], "mean_bf16": runs["bf16"],
                "mean_fp32": runs["fp32"], "abs_diff": diff, "within_tolerance": ok}

    def synthesis_o(self) -> dict:
        import torch

        from zxvad.models import build_backbone
        from zxvad.synthesis import synthesize

        c = self.cfg()
        out = {}
        for batch in (self.plan["batch"], 4 * self.plan["batch"]):
            clips, donors = self.bench.synthetic_batch(batch, c.model.T, c.model.image_size,
                                                  self.device, 1)
            R = build_backbone(c.model.backbone, c.model.backbone_seed, c.model.backbone_size,
                               c.model.backbone_layer)
            R_dev = R.to(self.device)
            synthesize(clips, donors, R_dev, generator=torch.Generator(device=self.device).manual_seed(0))
            self.sync()
            start = time.perf_counter()
            for _ in range(3):
                syn = synthesize(clips, donors, R_dev,
                                 generator=torch.Generator(device=self.device).manual_seed(0))
            self.sync()
            out[f"batch_{batch}_ms"] = round((time.perf_counter() - start) / 3 * 1000, 2)
        cpu_R = build_backbone(c.model.backbone, c.model.backbone_seed, c.model.backbone_size,
                               c.model.backbone_layer)
        from zxvad.synthesis import object_masks

        masks_dev = object_masks(R_dev, donors).cpu()
        masks_cpu = object_masks(cpu_R, donors.cpu())
        out["mask_agreement_with_cpu"] = round(float((masks_dev == masks_cpu).float().mean()), 4)
        out["mask_area"] = round(syn.mask_area, 4)
        out["on_device"] = syn.frames.device.type == self.device.type
        return out

    def inference(self) -> dict:
        import torch

        from zxvad.models import build_generator

        c = self.cfg()
        G = build_generator(c.model).to(self.device).eval()
        energy = Energy(self.device.index or 0) if self.gpu else None
        out = {"energy_source": energy.source if energy else None}
        for amp in (True, False):
            for batch in self.plan["infer_batches"]:
                x = torch.rand(batch, c.model.T, 3, c.model.image_size, c.model.image_size,
                               device=self.device) * 2 - 1
                ctx = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp and self.gpu)
                with torch.no_grad(), ctx:
                    for _ in range(3):
                        G(x)
                    self.sync()
                    if energy and energy.source:
                        energy.start()
                    start = time.perf_counter()
                    for _ in range(self.plan["infer_iters"]):
                        G(x)
                    self.sync()
                    seconds = time.perf_counter() - start
                    joules = energy.stop() if energy and energy.source else None
                frames = batch * self.plan["infer_iters"]
                key = f"{'bf16' if amp else 'fp32'}_batch_{batch}"
                out[f"{key}_fps"] = round(frames / seconds, 1)
                out[f"{key}_joules_per_frame"] = round(joules / frames, 5) if joules else None
        return out


def run_checks(args) -> Path:
    """Install, then every section; returns the JSON path."""
    t0 = time.perf_counter()
    wheels = install_wheels(Path(args.wheels), Path(args.site))
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: no CUDA device here (use --device cpu --dry-run)")
    plan = sizes(args.dry_run)
    checks = Checks(plan, device)
    header = {"device": torch.cuda.get_device_name(device) if checks.gpu else "cpu",
              "torch": torch.__version__, "python": sys.version.split()[0],
              "dry_run": args.dry_run, "wheels": wheels, "budget_s": args.budget,
              "bf16_tolerance": BF16_TOLERANCE}
    report = Report(Path(args.out), header)
    scale = 10 if args.dry_run else 1  # the dry run tests the path on a shared CPU, not the speed
    deadline = t0 + args.budget * scale
    sections = [("step_b8", lambda: checks.bench_step(plan["batch"])),
                ("step_max_batch", checks.max_batch),
                ("step_b8_compile", lambda: checks.bench_step(plan["batch"], "train.compile=true")),
                ("bf16_vs_fp32", checks.agreement),
                ("synthesis_o", checks.synthesis_o),
                ("inference", checks.inference)]
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        left = deadline - time.perf_counter()
        if left < 5:
            report.data["sections"][name] = {"status": "skipped", "error": "total budget spent"}
            report.write()
            continue
        report.section(name, fn, min(TIME_LIMITS_S[name] * scale, left))
    report.data["total_s"] = round(time.perf_counter() - t0, 1)
    report.write()
    return Path(args.out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zxvad.bench.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="the JSON file (default gpu-check.json)")
    parser.add_argument("--wheels", default=".gpu-wheels", help="folder of carried wheels")
    parser.add_argument("--site", default=".gpu-check-site", help="where missing wheels are unpacked")
    parser.add_argument("--device", default="cuda", help="cuda[:N], or cpu with --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="a tiny config through the same code")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"total seconds (default {BUDGET_S})")
    parser.add_argument("--only", nargs="*", default=[], help="run only these sections")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(TIME_LIMITS_S)
    if unknown:
        print(f"error: --only {', '.join(sorted(unknown))}: expected {', '.join(TIME_LIMITS_S)}",
              file=sys.stderr)
        return 2
    try:
        path = run_checks(args)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = json.loads(path.read_text())
    print(json.dumps({k: v.get("status") for k, v in data["sections"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
