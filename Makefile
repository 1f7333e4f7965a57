PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean gpu-wheels gpu-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

DEMO := demo-out
DEMO_SIZE := 64x64
# the frame side G trains and scores at follows the shards' (make demo DEMO_SIZE=128x128)
DEMO_SIDE = $(firstword $(subst x, ,$(DEMO_SIZE)))
# UCSD Ped2 (frames + ped2.mat, as Liu et al. lay it out): the demo's real anomalies, all 12 test videos
PED2 ?= $(or $(ZXVAD_PED2),../shared/data/ped2-dev)

# The whole chain on 2 CPU cores: synthetic domains in real layouts -> shards -> Ray Train with
# 2 DDP workers on the TI-style source -> zero-shot AUC (beside trivial baselines) on UCSD Ped2's
# test videos, on real footage with injected objects, and on two unseen synthetic scenes (plumbing
# checks) -> MLflow. A target whose data is absent is left out with a one-line note.
demo: $(STAMP)
	$(BIN)/python -m shards.demo --out $(DEMO)/raw --overwrite
	$(BIN)/python -m shards.build videofolder --root $(DEMO)/raw/source --out $(DEMO)/shards/source --split train --size $(DEMO_SIZE) --clip-len 16 --workers 2
	$(BIN)/python -m shards.build ped2 --root $(DEMO)/raw/target-street --out $(DEMO)/shards/target-street --split test --size $(DEMO_SIZE) --workers 2
	$(BIN)/python -m shards.build avenue --root $(DEMO)/raw/target-plaza --out $(DEMO)/shards/target-plaza --split test --size $(DEMO_SIZE) --workers 2
	rm -rf $(DEMO)/shards/target-real $(DEMO)/shards/ped2
	targets="street: $(DEMO)/shards/target-street, plaza: $(DEMO)/shards/target-plaza"; \
	if [ -d $(DEMO)/raw/target-real ]; then \
	  $(BIN)/python -m shards.build ped2 --root $(DEMO)/raw/target-real --out $(DEMO)/shards/target-real --split test --size $(DEMO_SIZE) --workers 2 || exit 1; \
	  targets="$$targets, real: $(DEMO)/shards/target-real"; \
	fi; \
	if [ -f $(PED2)/ped2.mat ]; then \
	  $(BIN)/python -m shards.build ped2 --root $(PED2) --out $(DEMO)/shards/ped2 --split test --size $(DEMO_SIZE) --workers 2 || exit 1; \
	  targets="ped2: $(DEMO)/shards/ped2, $$targets"; \
	else echo "note: UCSD Ped2 not found at $(PED2) (make demo PED2=DIR): the demo runs without target ped2"; fi; \
	$(BIN)/python -m zxvad.train --config demo --set "eval.targets={$$targets}" --set model.image_size=$(DEMO_SIDE) $(DEMO_ARGS)

# PYTHONFAULTHANDLER: a crash in a native library (DALI, Ray, torch) prints every thread's Python
# stack, also after pytest's own fault handler is gone (interpreter shutdown).
test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) mlruns mlflow.db ray_results demo-out

# The GPU check (docs/performance-and-scale.md). gpu-wheels needs internet; gpu-check runs on a CUDA machine
# that holds only torch (Python 3.12): it unpacks the missing wheels and writes gpu-check.json.
GPU_WHEELS := .gpu-wheels
GPU_PKGS := kornia==0.9.0 kornia_rs==0.2.0 pytorch-metric-learning==2.9.0 torchvision==0.29.1 \
	pillow numpy pyyaml tqdm packaging nvidia-ml-py

gpu-wheels:
	for pkg in $(GPU_PKGS); do $(PY) -m pip download -q --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) $$pkg || exit 1; done
	du -sh $(GPU_WHEELS)

gpu-check:
	$(PY) -m zxvad.bench.gpu_check --wheels $(GPU_WHEELS) --out gpu-check.json $(GPU_CHECK_ARGS)
