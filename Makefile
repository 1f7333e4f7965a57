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
# without the real clip (shards.demo says so), the demo evaluates the synthetic targets only
SYNTHETIC_TARGETS := eval.targets={street: $(DEMO)/shards/target-street, plaza: $(DEMO)/shards/target-plaza}

# The whole chain on 2 CPU cores: synthetic domains in real layouts -> shards -> Ray Train with
# 2 DDP workers on the TI-style source -> zero-shot AUC (beside trivial baselines) on two unseen
# synthetic scenes and one of real footage -> MLflow.
demo: $(STAMP)
	$(BIN)/python -m shards.demo --out $(DEMO)/raw --overwrite
	$(BIN)/python -m shards.build videofolder --root $(DEMO)/raw/source --out $(DEMO)/shards/source --split train --size $(DEMO_SIZE) --clip-len 16 --workers 2
	$(BIN)/python -m shards.build ped2 --root $(DEMO)/raw/target-street --out $(DEMO)/shards/target-street --split test --size $(DEMO_SIZE) --workers 2
	$(BIN)/python -m shards.build avenue --root $(DEMO)/raw/target-plaza --out $(DEMO)/shards/target-plaza --split test --size $(DEMO_SIZE) --workers 2
	rm -rf $(DEMO)/shards/target-real
	if [ -d $(DEMO)/raw/target-real ]; then \
	  $(BIN)/python -m shards.build ped2 --root $(DEMO)/raw/target-real --out $(DEMO)/shards/target-real --split test --size $(DEMO_SIZE) --workers 2 && \
	  $(BIN)/python -m zxvad.train --config demo $(DEMO_ARGS); \
	else $(BIN)/python -m zxvad.train --config demo --set "$(SYNTHETIC_TARGETS)" $(DEMO_ARGS); fi

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

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
