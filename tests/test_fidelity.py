"""Storage fidelity: qualities, the build's fidelity check, and what DALI hands to evaluation.

Why test sets are lossless: a labelled demo target sharded with the default test settings
gives, read back through EvalLoader, the consecutive-frame PSNRs of its source frames (after the
same resize and YUV conversion) within 0.1 dB, and the same copy_last AUC within 0.5 points.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from layouts import make_frame
from shards.build import TRAIN_QUALITY, build
from shards.encode import decode_clip, encode_clip, resize_frame, to_rgb
from shards.format import ClipMeta
from zxvad import scoring
from zxvad.bench import codec as bench_codec

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
T = 4


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """A small labelled demo target (Ped2 layout) with its source frames on disk."""
    from shards.demo import write_demo_domains

    root = tmp_path_factory.mktemp("demo")
    domains = write_demo_domains(root / "raw", seed=0, source_videos=1, test_videos=3, train_videos=1)
    return domains["target-street"][1]


@pytest.fixture(scope="module")
def street_default(street, tmp_path_factory) -> tuple[Path, dict]:
    """The target sharded with the default test settings, every clip checked by the build."""
    out = tmp_path_factory.mktemp("shards") / "street"
    return out, build("demo", street, out, split="test", size=SIZE, fidelity_sample=1.0, progress=False)


def _decoded_and_source(street: Path, shards: Path, codec: str = "vp9"):
    from shards import readers
    from zxvad.data import resolve_shards

    videos = readers.list_videos("demo", street, "test")
    decoded, _ = bench_codec.decoded_frames(resolve_shards(str(shards)), SIZE)
    source = {k: bench_codec._as_float(v) for k, v in bench_codec.reference_frames(videos, SIZE, codec).items()}
    return decoded, source, {v.video_id: v.labels for v in videos}


def _consecutive(x: torch.Tensor) -> torch.Tensor:
    return scoring.psnr(x[1:], x[:-1])


# ------------------------------------------------------------------------------ acceptance

def test_default_test_set_keeps_consecutive_psnr_and_copy_last_auc(street, street_default):
    out, manifest = street_default
    assert manifest["options"]["quality"] == "lossless" and manifest["options"]["codec"] == "vp9"
    decoded, source, labels = _decoded_and_source(street, out)
    assert decoded.keys() == source.keys() and len(decoded) == 3
    for video_id, frames in decoded.items():
        assert not torch.isnan(frames).any(), f"{video_id}: a frame never came back from the shards"
        change = (_consecutive(frames) - _consecutive(source[video_id])).abs()
        assert change.max().item() <= 0.1, (video_id, change.max().item())
    stored = bench_codec.predictor_aucs(decoded, labels, T)["copy_last"]
    original = bench_codec.predictor_aucs(source, labels, T)["copy_last"]
    assert 0.6 < original < 1.0  # the labels and frames are real: the AUC is neither chance nor trivial
    assert abs(stored - original) * 100 <= 0.5, (stored, original)


def test_a_lossy_test_set_fails_the_same_check(street, tmp_path):
    # The check above can fail: crf 30 VP9 pulses consecutive-frame PSNR by far more than 0.1 dB.
    build("demo", street, tmp_path / "compact", split="test", size=SIZE, quality="compact", progress=False)
    decoded, source, _ = _decoded_and_source(street, tmp_path / "compact")
    worst = max((_consecutive(decoded[k]) - _consecutive(source[k])).abs().max().item() for k in decoded)
    assert worst > 0.1


# ------------------------------------------------------------------------------ what the build records

def test_quality_and_fidelity_are_recorded(street_default):
    out, manifest = street_default
    clips = manifest["totals"]["clips"]
    assert manifest["fidelity"] == {"sample": 1.0, "clips_checked": clips, "frames_checked": manifest["totals"]["frames"],
                                    "psnr_db_mean": 100.0, "psnr_db_min": 100.0,
                                    "consecutive_psnr_change_db_mean": 0.0, "consecutive_psnr_change_db_max": 0.0}
    metas = []
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            metas += [ClipMeta.from_json(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert len(metas) == clips and {(m.codec, m.quality) for m in metas} == {("vp9", "lossless")}


def test_lossy_fidelity_is_measured_not_assumed(tmp_path):
    from shards.build import summary

    for i in range(2):
        path = tmp_path / "v" / f"v{i}.avi"
        path.parent.mkdir(exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("ffv1", rate=25)  # lossless source, so only our codec loses
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for j in range(12):
                for packet in stream.encode(av.VideoFrame.from_ndarray(make_frame(j + 5 * i, (48, 64)), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    manifest = build("videofolder", tmp_path / "v", tmp_path / "o", clip_len=4, size=(32, 48), quality="compact",
                     fidelity_sample=1.0, progress=False)
    fidelity = manifest["fidelity"]
    # 3 clips of 4 from each 12-frame video, but the second one's brightness wraps (a cut, which
    # clean windows split: 10 + 2 frames, 2 clips)
    assert manifest["options"]["quality"] == "compact" and fidelity["clips_checked"] == 5
    assert 20 < fidelity["psnr_db_min"] <= fidelity["psnr_db_mean"] < 60
    assert fidelity["consecutive_psnr_change_db_max"] >= fidelity["consecutive_psnr_change_db_mean"] > 0
    text = summary(manifest)
    assert "stored vp9 compact" in text and f"{fidelity['psnr_db_mean']:.2f} dB mean" in text
    # sample 0: only the first clip of the first video is decoded again
    few = build("videofolder", tmp_path / "v", tmp_path / "few", clip_len=4, size=(32, 48), quality="compact",
                fidelity_sample=0.0, progress=False)
    assert few["fidelity"]["clips_checked"] == 1 and few["fidelity"]["frames_checked"] == 4


@pytest.mark.parametrize("split, codec, quality", [("test", "vp9", "lossless"), ("train", "vp9", TRAIN_QUALITY),
                                                   ("test", "mjpeg", "high")])
def test_default_quality_follows_split_and_codec(tmp_path, split, codec, quality):
    folder = tmp_path / "v"
    folder.mkdir()
    for j in range(6):
        from PIL import Image
        Image.fromarray(make_frame(j, (16, 16))).save(folder / f"{j:03d}.png")
    manifest = build("videofolder", tmp_path, tmp_path / "o", split=split, codec=codec, clip_len=4, overlap=2,
                     size=(16, 16), progress=False)
    assert manifest["options"]["quality"] == quality


def test_fidelity_psnr_is_scorings_psnr():
    from shards.fidelity import psnr

    x, y = torch.rand(5, 3, 8, 8) * 2 - 1, torch.rand(5, 3, 8, 8) * 2 - 1
    assert np.allclose(psnr(x.numpy(), y.numpy()), scoring.psnr(x, y).numpy(), atol=1e-4)
    assert np.allclose(psnr(x.numpy(), x.numpy()), scoring.psnr(x, x).numpy())  # the same 100 dB cap


# ------------------------------------------------------------------------------ the decoder's conversion

@pytest.mark.parametrize("codec, quality", [("vp9", "lossless"), ("vp9", "compact"), ("mjpeg", "high")])
def test_to_rgb_is_dalis_cpu_conversion_bit_for_bit(codec, quality):
    """The build's fidelity check decodes with PyAV + to_rgb; DALI must hand out the same pixels."""
    from nvidia.dali import fn, pipeline_def

    frames = [resize_frame(make_frame(i, (60, 90)), (48, 64), codec) for i in range(6)]
    data = encode_clip(frames, codec, quality=quality)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.decoders.video(fn.external_source(name="clip"), device="cpu")

    p = pipe()
    p.build()
    p.feed_input("clip", [np.frombuffer(data, np.uint8)])
    dali = np.array(p.run()[0][0])
    ours = np.stack([to_rgb(f) for f in decode_clip(data)])
    assert dali.shape == ours.shape == (6, 48, 64, 3) and np.array_equal(dali, ours)
    if quality == "lossless":
        assert np.array_equal(ours, np.stack([to_rgb(f) for f in frames]))  # the encoder's input, exactly
    plain = np.stack([f.to_ndarray(format="rgb24") for f in decode_clip(data)])
    assert not np.array_equal(plain, dali)  # swscale's default conversion is not DALI's: the flags matter


# ------------------------------------------------------------------------------ readers of the shards

def test_loaders_and_evaluate_report_the_quality(street_default, tmp_path, capsys):
    from zxvad.data import EvalLoader, resolve_shards
    from zxvad.evaluate import storage_lines

    out, _ = street_default
    assert EvalLoader(resolve_shards(str(out)), size=SIZE).quality == "vp9 lossless"
    lossy = tmp_path / "lossy"
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["options"]["quality"] = "compact"  # a manifest is all storage_lines reads
    lossy.mkdir()
    (lossy / "manifest.json").write_text(json.dumps(manifest))
    lines, warnings = storage_lines({"street": str(out), "old": str(lossy)})
    assert lines == [f"target street: {out} stored vp9 lossless", f"target old: {lossy} stored vp9 compact"]
    assert len(warnings) == 1 and warnings[0].startswith("warning: target old is stored lossy (vp9 compact)")
    del manifest["options"]["quality"]  # built before qualities existed: lossy VP9
    (lossy / "manifest.json").write_text(json.dumps(manifest))
    assert "unrecorded" in storage_lines({"old": str(lossy)})[1][0]


# ------------------------------------------------------------------------------ the benchmark command

def test_bench_codec_table(street):
    from zxvad.bench.__main__ import main

    argv = ["codec", "--root", str(street), "--size", "32x32", "--settings", "vp9:lossless,vp9:compact"]
    proc = subprocess.run([sys.executable, "-m", "zxvad.bench", *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    lossless, compact = figures["rows"]
    assert "| vp9:lossless |" in proc.stdout
    assert lossless["psnr_to_source_db"] == 100.0 and lossless["consecutive_psnr_change_db"] == 0.0
    assert lossless["auc_copy_last"] == figures["source_auc"]["vp9"]["copy_last"]
    assert compact["psnr_to_source_db"] < 45 and compact["bytes_per_frame"] < lossless["bytes_per_frame"]
    assert min(lossless["encode_fps"], lossless["decode_fps"]) > 0
    assert main(["codec", "--root", str(street), "--settings", "mjpeg:lossless"]) == 2


# ------------------------------------------------------------------------------ the GPU path

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA: the 'mixed' (NVDEC) decoder needs a GPU")
def test_gpu_decodes_the_default_shards(street, street_default, tmp_path):
    """NVDEC must read what the defaults write (lossless VP9 for tests, TRAIN_QUALITY for training)."""
    from zxvad.data import EvalLoader, resolve_shards

    train = build("demo", street, tmp_path / "train", split="train", size=SIZE, clip_len=8, progress=False)
    assert train["options"]["quality"] == TRAIN_QUALITY
    for shards in (street_default[0], tmp_path / "train"):
        paths = resolve_shards(str(shards))
        cpu = list(EvalLoader(paths, size=SIZE, threads=1))
        gpu = list(EvalLoader(paths, size=SIZE, threads=1, device="cuda"))
        assert [(c.video_id, c.first_frame, len(c.frames)) for c in cpu] == \
               [(g.video_id, g.first_frame, len(g.frames)) for g in gpu]
        for c, g in zip(cpu, gpu):
            g = g.frames.cpu()
            # NVDEC output goes through DALI's own CUDA YUV->RGB kernel, so allow rounding, not drift
            assert scoring.psnr(g, c.frames).min().item() > 35
            assert (_consecutive(g) - _consecutive(c.frames)).abs().max().item() <= 0.1
