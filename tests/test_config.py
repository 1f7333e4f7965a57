"""Config: presets, YAML files, typed overrides and one-line errors naming the key."""

import pytest

from zxvad import config


def test_presets_load_with_the_papers_values():
    paper = config.load("paper")
    assert (paper.model.image_size, paper.model.T, paper.model.width) == (256, 4, 64)
    assert paper.model.memory_items == 2000 and paper.train.batch_size == 8
    assert paper.train.steps == 5000
    assert (paper.train.lr_g, paper.train.lr_d, paper.train.lr_n) == (2e-4, 2e-5, 2e-5)
    assert (paper.loss.alpha_D, paper.loss.alpha_N, paper.loss.alpha_m) == (0.05, 0.5, 0.01)
    demo = config.load("demo")
    assert demo.model.image_size < paper.model.image_size and demo.model.width < paper.model.width
    assert demo.model.memory_dim == 8 * demo.model.width
    assert set(config.preset_names()) >= {"paper", "demo"}


def test_a_config_written_before_a_key_was_renamed_still_loads():
    old = config.from_yaml_text("model:\n  frames: 6\n  width: 8\n  memory_dim: 64\n")
    assert old.model.T == 6 and "model.frames" not in old.flat()
    with pytest.raises(config.ConfigError, match="model.frames"):
        config.load("demo", ["model.frames=6"])  # the command line speaks the new names only


def test_overrides_are_typed():
    cfg = config.load("demo", ["loss.alpha_N=0", "train.steps=12", "model.backbone=alexnet",
                               "train.amp=true", "eval.targets={a: x, b: y}", "train.lr_g=1e-3"])
    assert cfg.train.lr_g == 1e-3
    assert cfg.loss.alpha_N == 0.0 and isinstance(cfg.loss.alpha_N, float)
    assert cfg.train.steps == 12 and cfg.train.amp is True
    assert cfg.model.backbone == "alexnet"
    assert cfg.eval.targets == {"a": "x", "b": "y"}


@pytest.mark.parametrize("override, message", [
    ("loss.alpha_X=1", "config key 'loss.alpha_X': unknown key"),
    ("nope.steps=1", "config key 'nope.steps': unknown section 'nope'"),
    ("train.steps=abc", "config key 'train.steps': expected int, got 'abc'"),
    ("train.steps=1.5", "config key 'train.steps': expected int, got 1.5"),
    ("train.amp=3", "config key 'train.amp': expected bool, got 3"),
    ("loss.alpha_D=high", "config key 'loss.alpha_D': expected float, got 'high'"),
    ("model.backbone=vgg", "config key 'model.backbone' = 'vgg': must be one of"),
    ("model.width=8", "config key 'model.memory_dim' = 128: must equal 8 * model.width = 64"),
    ("data.fraction=0", "config key 'data.fraction' = 0.0: must lie in (0, 1]"),
    ("train.steps", "override 'train.steps': expected key=value"),
])
def test_bad_keys_and_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(config.ConfigError) as err:
        config.load("demo", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_file_with_a_base_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\ntrain:\n  steps: 7\nloss:\n  alpha_raa: 0.5\n")
    cfg = config.load(str(path))
    assert cfg.train.steps == 7 and cfg.loss.alpha_raa == 0.5
    assert cfg.model.image_size == config.load("demo").model.image_size
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 7\n")
    with pytest.raises(config.ConfigError, match="config key 'train.stepz': unknown key"):
        config.load(str(bad))
    with pytest.raises(config.ConfigError, match="no such file or preset"):
        config.load(str(tmp_path / "missing.yaml"))


def test_yaml_round_trip_and_flat_keys():
    cfg = config.load("paper", ["eval.targets={ped2: s3://b/ped2}"])
    again = config.from_yaml_text(cfg.to_yaml())
    assert again == cfg
    flat = cfg.flat()
    assert flat["loss.alpha_N"] == 0.5 and flat["model.memory_items"] == 2000
