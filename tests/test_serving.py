"""The MLflow model that serves frame scores: logged with its code and calibration, registered
under an alias, loaded back in-process, and served over HTTP on 127.0.0.1 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from zxvad import calibration, scoring, serving

from helpers import free_ports, tiny_config, tiny_generator
from test_detect import scene

NAME = "zxvad-camera"
SIZE, T = 32, 4  # tiny_config's


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny calibrated G logged and registered as NAME@champion in a tmp sqlite store."""
    import mlflow

    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = tiny_config()
    assert (cfg.model.image_size, cfg.model.T) == (SIZE, T)
    G = tiny_generator(cfg).eval()
    rng = np.random.default_rng(0)
    scales = {p: calibration.ScoreScale.fit(rng.normal(m, 1.0, 500))
              for p, m in (("G", 20.0), ("copy_last", 30.0))}
    cal = calibration.Calibration(scales, T, SIZE, sources=["synthetic"])
    mlflow.set_tracking_uri(uri)
    from zxvad.tracking.store import experiment_id

    with mlflow.start_run(experiment_id=experiment_id(uri, "serving-test")):
        serving.log_model(G, cfg, calibration=cal, registered_model_name=NAME, alias="champion")
    clip = scene(10, size=SIZE)
    return {"uri": uri, "G": G, "cal": cal, "clip": clip, "tmp": tmp}


def expected(registered) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(registered["clip"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    windows = torch.stack([x[i:i + T + 1] for i in range(len(x) - T)])
    with torch.no_grad():
        psnr = scoring.psnr(registered["G"](windows[:, :T]).prediction, windows[:, T]).numpy()
    return psnr, registered["cal"].scale("G").score(psnr)


def test_the_alias_loads_a_pyfunc_that_returns_psnr_and_calibrated_scores(registered):
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(registered["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(registered["clip"])
    psnr, score = expected(registered)
    assert list(out["frame"]) == list(range(T, 10))
    assert out["psnr"].to_numpy() == pytest.approx(psnr, abs=1e-4)
    assert out["score"].to_numpy() == pytest.approx(score, abs=1e-4)
    with pytest.raises(MlflowException, match=r"3 frame\(s\): expected \(N, 32, 32, 3\)"):
        model.predict(registered["clip"][:3])
    # the logged model carries zxvad's code and pinned requirements, not `pip install zxvad`
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion")
    assert os.path.exists(os.path.join(local, "code", "zxvad", "calibration.py"))
    requirements = open(os.path.join(local, "requirements.txt")).read()
    assert "torch==" in requirements and "zxvad" not in requirements


def test_detect_and_evaluate_load_g_and_its_calibration_from_the_alias(registered):
    import mlflow

    from zxvad.checkpoint import load_generator

    mlflow.set_tracking_uri(registered["uri"])
    G, cfg = load_generator(f"models:/{NAME}@champion")
    x = torch.zeros(2, T, 3, SIZE, SIZE)
    assert torch.allclose(G(x).prediction, registered["G"](x).prediction, atol=1e-6)
    found = calibration.find(f"models:/{NAME}@champion")
    assert found is not None and found.scale("G").median == pytest.approx(
        registered["cal"].scale("G").median)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_mlflow_serves_the_champion_over_http_and_answers_bad_requests_with_4xx(registered):
    (port,) = free_ports(1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    # env manager "local": this machine has no network to build a fresh virtualenv; the model's
    # own code (code_paths) is what the server imports, not an installed zxvad
    env.pop("PYTHONPATH", None)
    # mlflow starts uvicorn by name: the one beside this interpreter (a venv not on PATH)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        env=env, cwd=registered["tmp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError("mlflow models serve did not start:\n" + (
                    server.stdout.read() if server.poll() is not None else "(timed out)"))
            time.sleep(1)

        status, reply = _post(base + "/invocations",
                              json.dumps({"inputs": registered["clip"].tolist()}).encode())
        assert status == 200, reply
        rows = reply["predictions"]
        psnr, score = expected(registered)
        assert [r["frame"] for r in rows] == list(range(T, 10))
        assert [r["psnr"] for r in rows] == pytest.approx(psnr.tolist(), abs=1e-4)
        assert [r["score"] for r in rows] == pytest.approx(score.tolist(), abs=1e-4)

        too_few = json.dumps({"inputs": registered["clip"][:2].tolist()}).encode()
        wrong_size = json.dumps({"inputs": np.zeros((6, 16, 16, 3), dtype=np.uint8).tolist()}).encode()
        for body, message in ((too_few, "2 frame(s): expected (N, 32, 32, 3)"),
                              (wrong_size, "shape"), (b"not json", "")):
            status, reply = _post(base + "/invocations", body)
            assert 400 <= status < 500, (status, reply)
            assert message in reply.get("message", ""), reply
        assert server.poll() is None  # bad requests never crash the server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_logged_code_is_found_from_this_file_even_when_a_data_folder_is_named_shards(tmp_path):
    # a sweep's trial runs in a folder holding shards/ (data): with an editable install, "import
    # shards" there yields a namespace package without __file__, which broke log_model
    import subprocess
    import sys

    (tmp_path / "shards").mkdir()
    code = ("import shards, zxvad.serving as s; print(shards.__file__ is None, "
            "(s.PACKAGE_DIR.parent / 'shards' / '__init__.py').is_file(), s.PACKAGE_DIR.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["True", "zxvad"]
