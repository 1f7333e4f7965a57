"""Run configuration: dataclasses with YAML presets and typed ``--set a.b=value`` overrides.

Every weight, size and path of a run lives here and nowhere else. A config is made from a
packaged preset (``paper``, ``demo``) or a YAML file, then overridden key by key. Every error
is a :class:`ConfigError` whose message is one line naming the offending key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
BACKBONES = ("resnet50", "resnet152", "densenet161", "alexnet", "mnasnet1_0")
SHRINKS = ("continuous", "hard")
MEMORY_QUERIES = ("raw", "centred")
G_OUTPUTS = ("frame", "residual")
CRITIC_NORMS = ("batch", "instance", "none")
ATTENTION_SCALES = ("minmax", "max")  # zxvad.synthesis.ATTENTION_SCALES
NORMALCY_PAIRS = ("literal", "real", "prediction")
# Target names become file names (NAME-curves.png) and metric keys: no separators, no dot first.
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Keys renamed since configs were first written (old -> new): YAML files and checkpoints written
# before still load, and run names hash the old names so those runs still resume.
RENAMED_KEYS = {"model.frames": "model.T"}  # "frames" meant T, the frames G sees, not a clip's


class ConfigError(ValueError):
    """A bad config key or value; the message is one line that names the key."""


@dataclass
class ModelConfig:
    """G, D, N and R. ``width`` is G's first U-Net level (64 in the paper)."""

    image_size: int = 256  # square frames, H = W
    T: int = 4  # G sees T frames and predicts frame T+1
    width: int = 64  # U-Net levels are width, 2w, 4w, 8w
    memory_items: int = 2000  # K
    memory_dim: int = 512  # Q; must equal 8 * width (G's bottleneck channels)
    shrink_threshold: float = 0.0005  # lambda of the hard shrinkage (used when shrink_relative = 0)
    # The defaults below reproduce the code before the fixes of docs/method.md ("where we depart
    # from the paper's letter"), so older checkpoints reload as they were trained; the presets set the fixes.
    shrink_relative: float = 0.0  # lambda = shrink_relative / K when > 0 (MemAE: 1-3)
    memory_temperature: float = 1.0  # tau: w = softmax(cos / tau); 1 = the paper's literal softmax
    memory_shrink: str = "continuous"  # MemAE's relu(w-l)w/(|w-l|+eps), or "hard": w * [w > l]
    memory_query: str = "raw"  # address with z ("raw") or z minus its mean over positions ("centred")
    output: str = "frame"  # G's output: tanh(last layer) ("frame", the paper) or v_T + change ("residual")
    critic_norm: str = "batch"  # norm layers of D and N: batch (pix2pix), instance or none
    disc_width: int = 64  # first PatchGAN level of D and N
    disc_layers: int = 3
    backbone: str = "resnet50"  # R, untrained
    backbone_seed: int = 0  # R's random init; a checkpoint records it
    backbone_size: int = 0  # R sees donors resized to this square size; 0 = as they come
    mask_threshold: float = 0.1  # varsigma
    mask_spread: float = 1.0  # k: O's cut is max(varsigma, mean(A) + k std(A))
    backbone_layer: str = "last"  # R's features: its last stage, or "layer3" (resnets: one earlier)


@dataclass
class LossConfig:
    """Weights of eq. (1) (G) and eq. (6) (N); names follow the paper's symbols."""

    alpha_D: float = 0.05
    alpha_N: float = 0.5
    alpha_n: float = 1.0
    alpha_m: float = 0.01
    alpha_aa: float = 1.0
    alpha_raa: float = 1.0
    mem_weight: float = 0.0025
    arcface_margin: float = 28.6  # degrees
    arcface_scale: float = 64.0
    raa_normalise: bool = False  # divide L_RAA by the ArcFace scale s (its gradient is ~s otherwise)
    attention_scale: str = "minmax"  # N's A(.): minmax (one cell always 0) or max (A(v^) = 1 reachable)
    # N's two classes (beyond the paper except "literal"): literal = v^ normal, paste on a real
    # input frame abnormal (they also differ by generated vs real, which N learns first);
    # real = v_{T+1} normal, paste on a real input frame; prediction = v^ normal, paste on v^
    normalcy_pair: str = "literal"
    static_weight: float = 0.0  # > 0: MSE of G's change v^ - v_T on pixels that do not move
    static_threshold: float = 0.02  # a pixel is static where |v_{T+1} - v_T| < this ([0, 1] scale)


@dataclass
class DataConfig:
    """Where G's clips and O's donor frames come from (shard dirs, manifests or s3:// prefixes)."""

    train_shards: str = ""  # G's videos
    donor_shards: str = ""  # O's donors; empty means the same set as train_shards
    fraction: float = 1.0  # stable prefix of the training shards (see shards.format)
    frame_stride: int = 1
    shuffle_buffer: int = 256
    loader_threads: int = 2
    # windows cut from each decoded training clip (0: as many disjoint ones as a clip holds, 3 for
    # 16-frame clips at T=4): decoding is the loaders' main cost (docs/loader.md)
    windows_per_clip: int = 0
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation and the Ray Train run."""

    batch_size: int = 8  # per worker
    steps: int = 5000
    lr_g: float = 2e-4
    lr_d: float = 2e-5
    lr_n: float = 2e-5
    beta1: float = 0.5
    beta2: float = 0.999
    amp: bool = False  # CUDA only
    channels_last: bool = False  # G, D, N stored NHWC: faster on tensor cores, no gain on the CPU
    compile: bool = False  # torch.compile G, D and N in place (minutes of compiling first)
    fused_adam: bool = True  # one fused Adam kernel per optimiser (CUDA and CPU)
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # Ray CPUs per worker; 0: 1 on CPUs, the loaders' threads + 1 on a GPU
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the best ones by keep_best_by; Ray keeps the latest as well
    keep_best_by: str = "auc/mean"  # an AUC metric (max); "" keeps the newest (also with no targets)
    max_failures: int = 3
    storage_path: str = "ray_results"  # local folder or s3://bucket/prefix
    s3_endpoint: str = ""  # S3-compatible store; empty uses AWS_ENDPOINT_URL or AWS itself
    log_every: int = 10


@dataclass
class EvalConfig:
    """Zero-shot evaluation on target test sets (name -> test shards)."""

    targets: dict[str, str] = field(default_factory=dict)
    eval_every: int = 1000  # 0 = only at the end
    batch_size: int = 16
    plots: bool = True
    top_frames: int = 4  # difference maps for this many highest-scoring frames
    patch_size: int = 0  # > 0: also score by the worst patch_size^2 tile (beyond the paper)
    smooth_sigma: float = 0.0  # > 0: also score every protocol on scores smoothed over this many frames


@dataclass
class TrackingConfig:
    """MLflow; an empty tracking_uri means MLFLOW_TRACKING_URI or sqlite:///mlflow.db."""

    experiment: str = "zxvad"
    run_name: str = ""
    tracking_uri: str = ""
    on_unreachable: str = "fail"  # fail | local
    register_as: str = ""  # MLflow Model Registry name for the final G; "" registers nothing
    # Artifact root of experiments created from now on (a folder, file:// or s3:// URI); "" puts
    # them beside a sqlite database, or where the server says. Not part of the run name's hash.
    artifact_location: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.width": 64, ...}``: the form used for MLflow params and sweeps."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass field's type; ints widen to floats, nothing else."""
    hint = annotation
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif origin is dict:
        key_type, value_type = typing.get_args(hint)
        if isinstance(value, dict):
            return {_coerce(f"{key}.{k}", k, key_type): _coerce(f"{key}.{k}", v, value_type)
                    for k, v in value.items()}
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
    else:  # pragma: no cover - only the types above are used
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key '{key}': expected {name}, got {value!r}")


def _section_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; each failure is a ConfigError naming its key."""
    checks = [*_model_checks(cfg.model), *_loss_checks(cfg.loss), *_data_checks(cfg.data),
              *_run_checks(cfg)]
    for key, ok, why in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"config key '{key}' = {value!r}: {why}")
    for name in cfg.eval.targets:
        check_target_name(name, f"config key 'eval.targets.{name}'")
    return cfg


def _model_checks(m: ModelConfig) -> list[tuple[str, Any, str]]:
    return [
        ("model.image_size", m.image_size >= 32 and m.image_size % 16 == 0,
         "must be a multiple of 16 and at least 32 (four 2x poolings in G)"),
        ("model.T", m.T >= 1, "must be at least 1"),
        ("model.width", m.width >= 1, "must be positive"),
        ("model.memory_items", m.memory_items >= 1, "must be positive"),
        ("model.memory_dim", m.memory_dim == 8 * m.width,
         f"must equal 8 * model.width = {8 * m.width} (G's bottleneck channels)"),
        ("model.shrink_threshold", 0 <= m.shrink_threshold < 1, "must lie in [0, 1)"),
        ("model.shrink_relative", 0 <= m.shrink_relative < m.memory_items,
         "must lie in [0, model.memory_items) (lambda = shrink_relative / K < 1)"),
        ("model.memory_temperature", m.memory_temperature > 0, "must be positive"),
        ("model.memory_shrink", m.memory_shrink in SHRINKS, f"must be one of {', '.join(SHRINKS)}"),
        ("model.memory_query", m.memory_query in MEMORY_QUERIES,
         f"must be one of {', '.join(MEMORY_QUERIES)}"),
        ("model.output", m.output in G_OUTPUTS, f"must be one of {', '.join(G_OUTPUTS)}"),
        ("model.critic_norm", m.critic_norm in CRITIC_NORMS,
         f"must be one of {', '.join(CRITIC_NORMS)}"),
        ("model.backbone", m.backbone in BACKBONES, f"must be one of {', '.join(BACKBONES)}"),
        ("model.mask_threshold", 0 <= m.mask_threshold < 1, "must lie in [0, 1)"),
        ("model.mask_spread", 0 <= m.mask_spread <= 10, "must lie in [0, 10]"),
        ("model.backbone_layer", m.backbone_layer == "last"
         or (m.backbone_layer == "layer3" and m.backbone.startswith("resnet")),
         "must be 'last', or 'layer3' with a resnet backbone"),
        ("model.backbone_size", m.backbone_size == 0 or m.backbone_size >= 32,
         "must be 0 (donor size) or at least 32"),
        ("model.disc_layers", m.disc_layers >= 1, "must be at least 1"),
        ("model.disc_width", m.disc_width >= 1, "must be positive"),
        ("model.backbone_seed", m.backbone_seed >= 0, "must be 0 or more"),
    ]


def _loss_checks(loss: LossConfig) -> list[tuple[str, Any, str]]:
    checks = [("loss.attention_scale", loss.attention_scale in ATTENTION_SCALES,
               f"must be one of {', '.join(ATTENTION_SCALES)}"),
              ("loss.normalcy_pair", loss.normalcy_pair in NORMALCY_PAIRS,
               f"must be one of {', '.join(NORMALCY_PAIRS)}"),
              ("loss.static_threshold", 0 < loss.static_threshold < 1, "must lie in (0, 1)")]
    checks += [(f"loss.{name}", value >= 0, "must be 0 or more")
               for name, value in loss.__dict__.items() if not isinstance(value, str)]
    return checks + [("loss.arcface_margin", loss.arcface_margin < 90, "must lie in [0, 90) degrees"),
                     ("loss.arcface_scale", loss.arcface_scale > 0, "must be positive")]


def _data_checks(d: DataConfig) -> list[tuple[str, Any, str]]:
    return [
        ("data.fraction", 0 < d.fraction <= 1, "must lie in (0, 1]"),
        ("data.frame_stride", d.frame_stride >= 1, "must be at least 1"),
        ("data.shuffle_buffer", d.shuffle_buffer >= 1, "must be at least 1"),
        ("data.loader_threads", d.loader_threads >= 1, "must be at least 1"),
        ("data.windows_per_clip", d.windows_per_clip >= 0, "must be 0 (as many as fit) or more"),
        ("data.seed", d.seed >= 0, "must be 0 or more"),
    ]


def _run_checks(cfg: Config) -> list[tuple[str, Any, str]]:
    """train, eval and tracking."""
    t, e = cfg.train, cfg.eval
    return [
        ("train.batch_size", t.batch_size >= 1, "must be at least 1"),
        ("train.steps", t.steps >= 1, "must be at least 1"),
        ("train.lr_g", t.lr_g > 0, "must be positive"),
        ("train.lr_d", t.lr_d > 0, "must be positive"),
        ("train.lr_n", t.lr_n > 0, "must be positive"),
        ("train.beta1", 0 <= t.beta1 < 1, "must lie in [0, 1)"),
        ("train.beta2", 0 <= t.beta2 < 1, "must lie in [0, 1)"),
        ("train.seed", t.seed >= 0, "must be 0 or more"),
        ("train.log_every", t.log_every >= 1, "must be at least 1"),
        ("train.num_workers", t.num_workers >= 1, "must be at least 1"),
        ("train.cpus_per_worker", t.cpus_per_worker >= 0, "must be 0 (default) or more"),
        ("train.checkpoint_every", t.checkpoint_every >= 1, "must be at least 1"),
        ("train.keep_checkpoints", t.keep_checkpoints >= 1, "must be at least 1"),
        ("train.max_failures", t.max_failures >= 0, "must be 0 or more"),
        ("eval.eval_every", e.eval_every >= 0, "must be 0 (end only) or more"),
        ("eval.batch_size", e.batch_size >= 1, "must be at least 1"),
        ("eval.patch_size", 0 <= e.patch_size <= cfg.model.image_size,
         "must be 0 (off) or a tile side of at most model.image_size"),
        ("eval.top_frames", e.top_frames >= 0, "must be 0 or more"),
        ("eval.smooth_sigma", e.smooth_sigma >= 0, "must be 0 (off) or more frames"),
        ("train.keep_best_by", t.keep_best_by == "" or re.fullmatch(r"auc(_gain)?/[\w.-]+", t.keep_best_by),
         "must be '' or an AUC metric such as auc/mean, auc/<target>, auc_gain/mean"),
        ("tracking.register_as", re.fullmatch(r"[\w.-]*", cfg.tracking.register_as),
         "must be letters, digits, '.', '_' and '-' (an MLflow registered model name)"),
        ("tracking.on_unreachable", cfg.tracking.on_unreachable in ("fail", "local"),
         "must be 'fail' or 'local'"),
    ]


def check_target_name(name: str, where: str) -> str:
    """A target name safe as a file name and metric key; ConfigError naming ``where`` otherwise."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise ConfigError(f"{where}: target name {name!r} must be 1-64 letters, digits, '_', '-' "
                          "or '.', starting with a letter or digit")
    return name


def from_dict(raw: dict[str, Any] | None, base: Config | None = None) -> Config:
    """Apply a nested mapping (as read from YAML) on top of ``base`` (the defaults)."""
    cfg = base if base is not None else Config()
    cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name))
                                      for f in dataclasses.fields(cfg)})
    for section, values in (raw or {}).items():
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"config key '{section}': unknown section "
                              f"(known: {', '.join(f.name for f in dataclasses.fields(Config))})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config key '{section}': expected a mapping of keys, got {values!r}")
        for key, value in values.items():
            set_value(cfg, RENAMED_KEYS.get(f"{section}.{key}", f"{section}.{key}"), value)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set one ``section.key`` with a type check (no cross-field validation)."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key '{dotted}': expected section.key, e.g. train.steps")
    section_name, key = parts
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        raise ConfigError(f"config key '{dotted}': unknown section '{section_name}'")
    types_ = _section_types(type(section))
    if key not in types_:
        raise ConfigError(f"config key '{dotted}': unknown key (known in {section_name}: "
                          f"{', '.join(types_)})")
    setattr(section, key, _coerce(dotted, value, types_[key]))


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with each dotted key of ``values`` set, type-checked.

    ``with_values(cfg, {"train.steps": 100, "loss.alpha_N": 0})``; ``cfg`` itself is not changed.
    Raises ConfigError naming the first bad key or value.
    """
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        set_value(out, RENAMED_KEYS.get(key, key), value)
    return validate(out)


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.alpha_N=0"`` -> ``("loss.alpha_N", 0)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name or a YAML path, then ``key=value`` overrides, then validation."""
    raw: dict[str, Any] = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.suffix and (PRESET_DIR / f"{name_or_path}.yaml").exists():
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"config '{name_or_path}': no such file or preset "
                              f"(presets: {', '.join(preset_names())})")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config '{path}': not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config '{path}': expected a mapping of sections")
        raw = dict(raw)
        parent = raw.pop("base", None)  # a YAML file may start from a preset
        cfg = from_dict(raw, load(parent) if parent else None)
    else:
        cfg = Config()
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    return validate(cfg)


def from_yaml_text(text: str) -> Config:
    """Rebuild a config saved with :meth:`Config.to_yaml` (e.g. from a checkpoint)."""
    return validate(from_dict(yaml.safe_load(text)))


def add_arguments(parser: Any) -> None:
    """The ``--config`` / ``--set`` pair every command shares."""
    parser.add_argument("--config", default="demo",
                        help=f"preset ({', '.join(preset_names())}) or YAML file (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set loss.alpha_N=0 (repeatable)")
