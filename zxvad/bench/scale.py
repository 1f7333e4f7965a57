"""Scale drill: a Jester-layout corpus of N videos through shards -> DALI loader -> training.

Per N (``--sizes``): the reader's listing and the fraction hashing, timed in this process; then
``python -m shards.build jester`` in a child, watched with psutil: wall time, CPU time of the
whole process tree (``getrusage(RUSAGE_CHILDREN)``, plus the Ray workers' own counters with
``--ray``), the driver's and each worker's peak RSS, frames/s, shards, the manifest's size and the
time to write it again. Linearity is read off the per-video figures: a step that grows faster
than the corpus shows as a per-video cost that rises with N.

On the largest N: the DALI training reader on 2 ranks (clips/s, the part of each rank, every clip
once per epoch), 50 training steps from each nested fraction (each a prefix of the next), and
with ``--kill-resume`` a build killed with SIGKILL half way and run again, compared byte for byte
with the uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_S = 0.2
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p) -> None:
    p.add_argument("--sizes", default="1000,5000,20000", help="corpus sizes N, comma separated")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "zxvad-scale"),
                   help="corpora and shards go here (about 110 KB of frames per video at 32x32)")
    p.add_argument("--workers", type=int, default=2, help="encoding processes of the build")
    p.add_argument("--ray", action="store_true", help="also build each N as Ray tasks on a local Ray")
    p.add_argument("--frame-size", type=int, default=32, help="corpus frames and stored shards, square")
    p.add_argument("--frames", default="12-40", metavar="MIN-MAX", help="frames per corpus video")
    p.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    p.add_argument("--skip-build", action="store_true", help="reuse the shards of an earlier run")
    p.add_argument("--skip-loader", action="store_true", help="no DALI loader check")
    p.add_argument("--skip-train", action="store_true", help="no fraction training")
    p.add_argument("--kill-resume", action="store_true",
                   help="kill -9 the largest build half way, re-run it, compare with the clean build")
    p.add_argument("--loader-batches", type=int, default=40, help="batches per rank timed in the loader")
    p.add_argument("--train-steps", type=int, default=50, help="training steps per fraction")
    p.add_argument("--fractions", default="0.0125,0.08,0.25", help="nested fractions to train from")


def run(args) -> dict:
    sizes = sorted({int(n) for n in args.sizes.split(",") if n.strip()})
    if not sizes or sizes[0] < 10:
        raise ValueError(f"--sizes {args.sizes!r}: expected corpus sizes of at least 10 videos")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(work, sizes[-1], args.frame_size, args.frames)
    figures: dict = {"sizes": sizes, "workers": args.workers, "frame_size": args.frame_size, "builds": []}
    modes = ["pool"] + (["ray"] if args.ray else [])
    ray_address = start_ray(work) if args.ray else None
    try:
        for n in sizes:
            root = subset_root(work, corpus, n)
            listing = measure_listing(root)
            for mode in modes:
                out = work / f"shards-{n}-{mode}"
                if args.skip_build and (out / "manifest.json").exists():
                    continue
                row = {"videos": n, "mode": mode, **listing,
                       **measure_build(root, out, args, ray_address if mode == "ray" else None)}
                figures["builds"].append(row)
                print(build_line(row), flush=True)
        largest = work / f"shards-{sizes[-1]}-pool"
        if args.kill_resume:
            figures["kill_resume"] = kill_and_resume(subset_root(work, corpus, sizes[-1]), largest, args)
            print(f"kill -9 at {figures['kill_resume']['killed_at_fraction']:.0%} of the videos, re-run: "
                  f"{'byte-identical' if figures['kill_resume']['identical'] else 'DIFFERENT'} "
                  f"({figures['kill_resume']['files']} files)", flush=True)
    finally:
        if ray_address:
            import ray

            ray.shutdown()
    figures["linearity"] = linearity(figures["builds"])
    for mode, lin in figures["linearity"].items():
        print(f"{mode}: per-video wall x{lin['wall_ratio']:.2f}, CPU x{lin['cpu_ratio']:.2f}, "
              f"driver peak RSS x{lin['driver_rss_ratio']:.2f} from N={sizes[0]} to N={sizes[-1]}", flush=True)
    if not args.skip_loader:
        figures["loader"] = loader_check(largest, args)
        lo = figures["loader"]
        print(f"loader on 2 ranks: {lo['clips_per_s']} clips/s per rank, parts {lo['parts']}, "
              f"steps/epoch {lo['steps_per_epoch']}, every clip once per epoch: {lo['each_clip_once']}",
              flush=True)
    if not args.skip_train:
        figures["train"] = train_fractions(largest, args)
        for t in figures["train"]["runs"]:
            print(f"fraction {t['fraction']}: {t['shards']} shards, {args.train_steps} steps in "
                  f"{t['seconds']:.0f} s (exit {t['returncode']})", flush=True)
        print(f"fractions nested (each a prefix of the next): {figures['train']['nested']}", flush=True)
    return figures


# ---------------------------------------------------------------------------------- corpus

def ensure_corpus(work: Path, n: int, size: int, frames: str = "12-40") -> Path:
    """The largest corpus, written once; smaller ones are its first N videos (same ids, same bytes)."""
    from shards.jester_like import write_jester_like

    low, _, high = frames.partition("-")
    root = work / (f"corpus-{n}-{size}px" + ("" if frames == "12-40" else f"-{frames}f"))
    if not (root / "jester-v1-train.csv").exists():
        began = time.time()
        counts = write_jester_like(root, n, size=size, frames=(int(low), int(high or low)), overwrite=True,
                                   progress=sys.stderr.isatty())
        print(f"corpus: {n} videos, {counts['frames']} frames in {time.time() - began:.0f} s", flush=True)
    return root


def subset_root(work: Path, corpus: Path, n: int) -> Path:
    """A Jester root listing the first ``n`` videos of ``corpus`` (a link to its frame folders)."""
    from shards.jester_like import FRAMES_DIR

    root = work / f"{corpus.name}-first-{n}"
    root.mkdir(exist_ok=True)
    link = root / FRAMES_DIR
    if not link.exists():
        link.symlink_to(corpus / FRAMES_DIR, target_is_directory=True)
    for name in ("jester-v1-train.csv", "jester-v1-validation.csv"):
        lines = [line for line in (corpus / name).read_text().splitlines(keepends=True)
                 if int(line.split(";", 1)[0]) <= n]
        (root / name).write_text("".join(lines))
    return root


def start_ray(work: Path) -> str:
    """A local Ray for the ``--ray`` builds (started once, so its start-up is not in any build)."""
    import ray

    info = ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    return info.address_info["address"]


# ---------------------------------------------------------------------------------- build

def measure_listing(root: Path) -> dict:
    """Seconds to list the videos and to hash and order them (what the build does first)."""
    from shards import readers
    from shards.build import _plan_tasks

    began = time.perf_counter()
    videos = readers.list_videos("jester", root, "train")
    listed = time.perf_counter()
    _plan_tasks("jester", videos, "train", 1.0)
    return {"listed": len(videos), "listing_s": listed - began, "hashing_s": time.perf_counter() - listed}


def build_command(root: Path, out: Path, args, ray: bool) -> list[str]:
    size = f"{args.frame_size}x{args.frame_size}"
    return [sys.executable, "-m", "shards.build", "jester", "--root", str(root), "--out", str(out),
            "--size", size, "--clip-len", str(args.clip_len), "--workers", str(args.workers), "--quiet"] \
        + (["--ray"] if ray else [])


def measure_build(root: Path, out: Path, args, ray_address: str | None, kill_after: float | None = None) -> dict:
    """Run one build in a child process and watch its tree; ``kill_after`` seconds: SIGKILL it then."""
    import psutil

    if not kill_after:
        _remove(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    ray_workers = _ray_workers(psutil) if ray_address else {}
    ray_cpu0 = {pid: _cpu(p) for pid, p in ray_workers.items()}
    ray_cpu: dict[int, float] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    logs = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # a pipe nobody reads would block it
    proc = subprocess.Popen(build_command(root, out, args, bool(ray_address)), cwd=ROOT, env=env,
                            stdout=logs[0], stderr=logs[1], text=True)
    driver, peaks, killed = psutil.Process(proc.pid), {}, False
    driver_peak = 0
    while proc.poll() is None:
        try:
            driver_peak = max(driver_peak, driver.memory_info().rss)
            for child in driver.children(recursive=True):
                peaks[child.pid] = max(peaks.get(child.pid, 0), _rss(child))
        except psutil.Error:
            pass
        for pid, p in list(ray_workers.items()):
            peaks[pid] = max(peaks.get(pid, 0), _rss(p))
            ray_cpu0.setdefault(pid, 0.0)
            ray_cpu[pid] = max(ray_cpu.get(pid, 0.0), _cpu(p))  # a worker that exits keeps its last reading
        if ray_address:
            ray_workers.update({pid: p for pid, p in _ray_workers(psutil).items() if pid not in ray_workers})
        if kill_after and time.perf_counter() - began > kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(POLL_S)
    proc.wait()
    wall = time.perf_counter() - began
    stdout, stderr = (_read_back(f) for f in logs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu += sum(max(max(ray_cpu.get(pid, 0.0), _cpu(p)) - ray_cpu0.get(pid, 0.0), 0.0)
               for pid, p in ray_workers.items())
    row = {"wall_s": wall, "cpu_s": cpu, "driver_peak_rss_mb": driver_peak / 2**20,
           "worker_peak_rss_mb": sorted(round(v / 2**20, 1) for pid, v in peaks.items() if v > 20 * 2**20)}
    if killed:
        return {**row, "killed": True}
    if proc.returncode != 0:
        raise RuntimeError(f"build of {root} failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    match = re.search(r"(\d+) frames decoded in", stdout)
    frames = int(match.group(1)) if match else 0
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    out.with_name(out.name + ".wall").write_text(f"{wall}\n")  # what --kill-resume times its kill by
    return {**row, "frames": frames, "frames_per_s": frames / wall, "shards": manifest["totals"]["shards"],
            "clips": manifest["totals"]["clips"], "manifest_bytes": manifest_path.stat().st_size,
            "manifest_write_s": _time_manifest_write(manifest)}


def _read_back(f) -> str:
    f.seek(0)
    text = f.read()
    f.close()
    return text


def _ray_workers(psutil) -> dict:
    """Ray's worker processes under this process (the local Ray it started)."""
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if "default_worker.py" in " ".join(p.cmdline()) or p.name().startswith("ray::"):
                found[p.pid] = p
        except psutil.Error:
            continue
    return found


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # noqa: BLE001 - a process that just ended
        return 0


def _cpu(p) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except Exception:  # noqa: BLE001 - a process that just ended keeps its last reading
        return 0.0


def _time_manifest_write(manifest: dict) -> float:
    """The builder's own manifest write (``LocalSink.write_manifest``), replayed into a scratch folder."""
    from shards.writer import LocalSink

    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        LocalSink(scratch).write_manifest(manifest)
        return time.perf_counter() - began


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def build_line(row: dict) -> str:
    n = row["videos"]
    return (f"N={n:6d} {row['mode']:4s}: listing {row['listing_s']:.2f} s + hashing {row['hashing_s']:.2f} s; "
            f"build {row['wall_s']:.1f} s wall ({1000 * row['wall_s'] / n:.2f} ms/video), "
            f"{row['cpu_s']:.1f} s CPU ({1000 * row['cpu_s'] / n:.2f} ms/video), {row['frames_per_s']:.0f} frames/s; "
            f"peak RSS driver {row['driver_peak_rss_mb']:.0f} MB, workers {row['worker_peak_rss_mb']} MB; "
            f"{row['shards']} shards, {row['clips']} clips; manifest {row['manifest_bytes'] / 1024:.0f} KiB "
            f"written in {1000 * row['manifest_write_s']:.1f} ms")


def linearity(builds: list[dict]) -> dict:
    """Per-video wall and CPU time, and driver RSS, at the largest N over the smallest, per mode."""
    out = {}
    for mode in sorted({b["mode"] for b in builds}):
        rows = sorted((b for b in builds if b["mode"] == mode), key=lambda b: b["videos"])
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        out[mode] = {
            "wall_ratio": (large["wall_s"] / large["videos"]) / (small["wall_s"] / small["videos"]),
            "cpu_ratio": (large["cpu_s"] / large["videos"]) / (small["cpu_s"] / small["videos"]),
            "driver_rss_ratio": large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"],
            "from": small["videos"], "to": large["videos"]}
    return out


# ---------------------------------------------------------------------------------- kill -9

def kill_and_resume(root: Path, clean: Path, args) -> dict:
    """SIGKILL a build of ``root`` at about half its clean wall time, re-run it, compare every file."""
    wall_file = clean.with_name(clean.name + ".wall")
    if not (clean / "manifest.json").exists() or not wall_file.exists():
        measure_build(root, clean, args, None)
    out = clean.with_name(clean.name + "-resumed")
    _remove(out)
    clean_wall = float(wall_file.read_text())
    killed = measure_build(root, out, args, None, kill_after=clean_wall / 2)
    done = _spooled_fraction(out, root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    again = subprocess.run(build_command(root, out, args, False), cwd=ROOT, env=env, capture_output=True, text=True)
    if again.returncode != 0:
        raise RuntimeError(f"resumed build failed: {again.stderr.strip().splitlines()[-1:]}")
    a, b = _digests(clean), _digests(out)
    return {"killed_at_s": killed["wall_s"], "killed_at_fraction": done, "resume_s": time.perf_counter() - began,
            "resumed": "(resumed)" in again.stdout, "identical": a == b, "files": len(a),
            "differing": sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:10]}


def _spooled_fraction(out: Path, root: Path) -> float:
    """Videos the killed build had finished (spool journal lines + finished buckets) over all listed."""
    work = out / ".build-work"
    done = sum(len(p.read_text().splitlines()) for p in work.glob("bucket-*.jsonl"))
    journal = work / "state.jsonl"
    for line in journal.read_text().splitlines() if journal.exists() else []:
        entry = json.loads(line)
        if "bucket" in entry:
            done += entry["done"]["videos"] + len(entry["done"]["skipped"])
    listed = len((root / "jester-v1-train.csv").read_text().splitlines())
    return done / max(listed, 1)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------- loader

def loader_check(shards: Path, args) -> dict:
    """Both ranks at once: ClipLoader clips/s, and one epoch of the training reader's keys."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        ranks = pool.starmap(_rank_epoch, [(str(shards), r, 2, args.loader_batches, args.frame_size) for r in (0, 1)])
    every = _all_keys(shards)
    seen = [k for r in ranks for k in r["keys"]]
    return {"clips_per_s": [round(r["clips_per_s"], 1) for r in ranks], "parts": [len(r["keys"]) for r in ranks],
            "steps_per_epoch": [r["steps_per_epoch"] for r in ranks], "clips": len(every),
            "each_clip_once": len(seen) == len(set(seen)) and set(seen) == every,
            "balanced": abs(len(ranks[0]["keys"]) - len(ranks[1]["keys"])) <= 1
            and ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]}


def _rank_epoch(spec: str, rank: int, world: int, batches: int, size: int) -> dict:
    """One rank: time ``batches`` ClipLoader batches, then read one epoch of its training reader's keys."""
    import numpy as np
    from nvidia.dali import pipeline_def

    from shards.format import META_EXT, ClipMeta, sample_key
    from zxvad.data import ClipLoader, resolve_shards
    from zxvad.data.pipelines import _reader
    from zxvad.data.shardset import check_shards

    shards = resolve_shards(spec)
    loader = ClipLoader(shards, batch_size=8, clip_len=5, size=(size, size), shard_id=rank, num_shards=world,
                        threads=1)
    it = iter(loader)
    next(it)  # the pipeline's start-up is not throughput
    began = time.perf_counter()
    for _ in range(batches):
        next(it)
    clips_per_s = batches * 8 / (time.perf_counter() - began)

    @pipeline_def
    def keys(infos):
        return _reader(infos, exts=[META_EXT], shard_id=rank, num_shards=world, shuffle=True, seed=0, buffer=256)

    pipe = keys(check_shards(shards, gpu=False), batch_size=64, num_threads=1, device_id=None)
    pipe.build()
    seen, left = [], loader.part_size
    while left > 0:
        (metas,) = pipe.run()
        for i in range(min(len(metas), left)):  # past the part come pad_last_batch repeats
            meta = ClipMeta.from_json(np.array(metas[i]).tobytes())
            seen.append(sample_key(meta.dataset, meta.video_id, meta.first_frame))
        left -= len(metas)
    return {"clips_per_s": clips_per_s, "keys": seen, "steps_per_epoch": loader.steps_per_epoch}


def _all_keys(shards: Path) -> set[str]:
    """Every sample key of the set, from the DALI indexes (what the tars hold)."""
    manifest = json.loads((shards / "manifest.json").read_text())
    keys = set()
    for s in manifest["shards"]:
        for line in (shards / s["index"]).read_text().splitlines()[1:]:
            keys.add(line.split()[3].split(".")[0])
    return keys


# ---------------------------------------------------------------------------------- training

def train_fractions(shards: Path, args) -> dict:
    """``--train-steps`` steps of the demo preset from each nested fraction of the largest set."""
    from zxvad.data import resolve_shards

    fractions = sorted(float(f) for f in args.fractions.split(","))
    lists = [resolve_shards(str(shards), f) for f in fractions] + [resolve_shards(str(shards))]
    nested = all(b[:len(a)] == a for a, b in zip(lists, lists[1:]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for f, shard_list in zip(fractions, lists):
        cmd = [sys.executable, "-m", "zxvad.train", "--config", "demo", "--no-mlflow", "--fresh",
               "--set", f"data.train_shards={shards}", "--set", f"data.donor_shards={shards}",
               "--set", f"data.fraction={f}", "--set", f"train.steps={args.train_steps}",
               "--set", "eval.targets={}", "--set", f"train.checkpoint_every={args.train_steps}",
               "--set", f"train.storage_path={Path(args.work) / 'ray_results'}"]
        began = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        runs.append({"fraction": f, "shards": len(shard_list), "seconds": time.perf_counter() - began,
                     "returncode": done.returncode,
                     "last_line": (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:]})
    return {"nested": nested, "runs": runs}
