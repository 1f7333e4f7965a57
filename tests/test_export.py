"""zxvad.export: TorchScript and ONNX files whose outputs match PyTorch's, with one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from zxvad import export
from zxvad.checkpoint import load_generator

from helpers import write_checkpoint


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny models run fastest on one thread (the fixture lives in conftest.py)."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


def frames_like_a_video(batch: int) -> torch.Tensor:
    """Windows of a smooth moving pattern in [-1, 1]: (batch, T, 3, 32, 32)."""
    t = torch.arange(batch * 4, dtype=torch.float32).view(batch, 4, 1, 1, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    phase = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 3, 1, 1)
    return torch.sin(6 * xx + 3 * yy + 0.2 * t + phase) * 0.9


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch(fmt, checkpoint, tmp_path, capsys):
    out = tmp_path / f"g{export.FORMATS[fmt]}"
    rc = export.main(["--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert f"wrote {out}" in printed.out
    card = json.loads(Path(f"{out}.json").read_text())
    assert card["input_shape"] == ["batch", 4, 3, 32, 32] and card["range"] == [-1.0, 1.0]
    assert 0 <= card["max_abs_difference_vs_pytorch"] <= export.DEFAULT_ATOL
    G, _ = load_generator(checkpoint)
    if fmt == "torchscript":  # loaded the way a server would, not through zxvad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            served = torch.jit.load(str(out))
        run = lambda x: served(x)  # noqa: E731
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["frames"]
        run = lambda x: torch.from_numpy(session.run(None, {"frames": x.numpy()})[0])  # noqa: E731
    for batch in (1, 5):
        x = frames_like_a_video(batch)
        with torch.no_grad():
            want = G(x).prediction
        got = run(x)
        assert got.shape == (batch, 3, 32, 32)
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        assert want.std() > 1e-3  # a real comparison, not two constant images
    assert not list(tmp_path.glob(".*")), "partial files left behind"


def test_export_that_differs_is_refused_and_removed(checkpoint, tmp_path, monkeypatch):
    G, cfg = load_generator(checkpoint)
    monkeypatch.setattr(export, "max_difference", lambda *a, **k: 0.5)
    with pytest.raises(ValueError, match=r"differ from PyTorch's by 0.5 \(more than --atol 0.0001\)"):
        export.export(G, cfg, "torchscript", tmp_path / "g.pt")
    assert list(tmp_path.iterdir()) == []


def test_export_errors(checkpoint, tmp_path, capsys):
    rc = export.main(["--checkpoint", str(tmp_path / "missing"), "--format", "onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not found" in err[0]
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", str(checkpoint), "--format", "tflite"])
    assert exit_.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        export.main(["--help"])
    assert exit_.value.code == 0 and "--format" in capsys.readouterr().out
