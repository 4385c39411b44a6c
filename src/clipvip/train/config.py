"""Typed training-run configuration: a YAML recipe plus ``key.sub=value`` overrides.

Recipes are data (``configs/*.yaml``). They are loaded into dataclasses so that a typo in a recipe or an
override fails at start-up, naming the key, instead of silently training with a default. The
per-process batch is *derived* from the global batch (``run.global_batch_size / world_size``) because the
paper's numbers are global batches (reference §6); stating the global batch keeps a recipe meaningful on
any number of GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from clipvip.atomic import atomic_write_text  # used by TrainConfig.save; importable from here as before

TASKS = ("retrieval", "pretrain", "image_text")
PRECISIONS = ("fp32", "bf16", "fp16")
OCL_VARIANTS = ("a", "b", "c", "d", "vs")
SELECT_ON = ("val", "test")
SCHEDULES = ("cosine", "linear", "constant")
SAMPLINGS = ("uniform", "jitter", "random")


class ConfigError(ValueError):
    """A recipe or override that cannot be honoured; the message names the key and the reason."""


@dataclass
class ModelSection:
    """Which weights to start from and how to run the towers.

    ``init`` is ``"config:NAME"`` (random init of a registered architecture), ``"clip:NAME_OR_DIR"`` (HF CLIP
    weights, the paper's post-pretraining start), ``"official:FILE.pt"`` (released CLIP-ViP checkpoint) or
    ``"pretrained:DIR"`` (our own saved model, e.g. ``runs/x/best``). ``tokenizer`` defaults to the init
    source when that source carries one.
    """

    init: str = "config:clipvip-tiny"
    attention: str | None = None
    num_frames: int = 12
    image_size: int | None = None
    tokenizer: str | None = None
    max_length: int = 50
    eval_num_frames: int | None = None


@dataclass
class DataSection:
    """Where the annotations and videos live (JSONL schema of the design doc).

    Relative paths are resolved against ``root`` when it is set, so one override (``data.root=...``) points a
    recipe at another copy of a dataset. ``generate_synthetic`` makes the tiny recipes self-contained: the
    synthetic world is generated at ``root`` when ``train`` is missing there.

    ``cache`` decodes each clip once (:mod:`clipvip.data.cache`): ``memory``, ``memory:SIZE_MB`` or
    ``disk:DIR`` (uint8 files, for real datasets); it needs ``sampling: uniform``. ``group_by`` names a
    record field linking rows that must share a training batch (``twin``: the synthetic world's
    reverse-order twins), drawn by :class:`~clipvip.train.sampler.GroupBatchSampler`.
    """

    task: str = "retrieval"
    root: str | None = None
    train: str = "train.jsonl"
    val: str | None = None
    test: str | None = None
    video_root: str | None = None
    paragraph: bool = False
    sampling: str = "jitter"
    num_workers: int = 0
    image_text: str | None = None
    image_text_weight: float = 1.0
    eval_batch_size: int = 16
    generate_synthetic: bool = False
    cache: str | None = None
    group_by: str | None = None

    def resolve(self, path: str | None) -> str | None:
        """``path`` made absolute against ``root`` (unchanged when absolute or when no root is set)."""
        if path is None or path == "":
            return None
        p = Path(os.path.expanduser(path))
        if not p.is_absolute() and self.root:
            p = Path(os.path.expanduser(self.root)) / p
        return str(p)


@dataclass
class OptimSection:
    """AdamW and its schedule (reference §6.1: betas 0.9/0.98, eps 1e-6, warmup 1 % then cosine).

    ``epochs`` counts passes over the training annotations (one item per video); ``max_steps``, when set,
    wins over ``epochs``. ``lr_mult`` maps name substrings to LR multipliers (``{temporal_embedding: 10}``,
    each key its own parameter groups); ``lr_mul`` multiplies the LR of parameters whose name contains ``lr_mul_prefix``
    (DiDeMo B/16 uses 10x on ``logit_scale``).
    """

    lr: float = 1e-6
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_ratio: float = 0.01
    lr_mul: float = 1.0
    lr_mul_prefix: str = ""
    lr_mult: dict[str, float] = field(default_factory=dict)
    grad_clip: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    schedule: str = "cosine"


@dataclass
class RunSection:
    """How the run is executed, checkpointed and selected.

    ``select_on: val`` (default) picks ``best/`` on the validation split. ``select_on: test`` reproduces the
    reference's practice of selecting on the test split; it is labelled as such in the logs and results
    because test-selected numbers are optimistic.

    ``keep_every: N`` (steps; 0 = off) keeps a model-only copy of the run every N steps, plus the starting
    weights, as ``step_{step:08d}/`` for the post-pretraining curves (``clipvip curve``).
    """

    global_batch_size: int = 128
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    freeze_text: bool = False
    seed: int = 42
    output_dir: str = "runs/clipvip"
    eval_every: int = 0
    save_every: int = 0
    keep_every: int = 0
    log_every: int = 10
    select_on: str = "val"
    select_metric: str = "t2v_dsl.R1"
    ocl_variant: str = "d"
    resume: str = "auto"
    device: str | None = None
    eval_at_start: bool = False
    deterministic: bool = False
    progress: bool = True


@dataclass
class TrainConfig:
    """A whole run: ``model``, ``data``, ``optim`` and ``run`` sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the resolved config atomically (the run folder's ``config.yaml``)."""
        atomic_write_text(Path(path), self.to_yaml())

    def per_device_batch(self, world_size: int) -> int:
        """The per-process batch derived from the global batch; refuses uneven splits."""
        gbs = self.run.global_batch_size
        if world_size < 1 or gbs % world_size:
            raise ConfigError(
                f"run.global_batch_size={gbs} is not divisible by the world size {world_size}; "
                f"choose a global batch that is a multiple of the number of processes"
            )
        return gbs // world_size

    def validate(self) -> None:
        """Check enumerations and ranges, naming the offending key."""
        _choice("data.task", self.data.task, TASKS)
        _choice("data.sampling", self.data.sampling, SAMPLINGS)
        _choice("run.precision", self.run.precision, PRECISIONS)
        _choice("run.select_on", self.run.select_on, SELECT_ON)
        _choice("run.ocl_variant", self.run.ocl_variant, OCL_VARIANTS)
        _choice("optim.schedule", self.optim.schedule, SCHEDULES)
        if self.model.attention is not None:
            from clipvip.config import ATTENTION_MODES

            _choice("model.attention", self.model.attention, ATTENTION_MODES)
        if ":" not in self.model.init:
            raise ConfigError(
                f"model.init={self.model.init!r} must be 'config:NAME', 'clip:NAME_OR_DIR', "
                f"'official:FILE.pt' or 'pretrained:DIR'"
            )
        kind, _, ref = self.model.init.partition(":")
        _choice("model.init (prefix)", kind, ("config", "clip", "official", "pretrained"))
        if not ref.strip():
            raise ConfigError(f"model.init={self.model.init!r} names nothing after '{kind}:' (e.g. "
                              f"config:clipvip-tiny, clip:openai/clip-vit-base-patch32, official:FILE.pt, "
                              f"pretrained:runs/x/best)")
        for key, value in (("run.global_batch_size", self.run.global_batch_size),
                           ("model.num_frames", self.model.num_frames),
                           ("model.max_length", self.model.max_length),
                           ("data.eval_batch_size", self.data.eval_batch_size)):
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.run.keep_every < 0:
            raise ConfigError(f"run.keep_every must be >= 0 (steps; 0 = off), got {self.run.keep_every}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {self.optim.betas}")
        if not 0.0 <= self.optim.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.optim.warmup_ratio}")
        if self.optim.max_steps is None and self.optim.epochs <= 0:
            raise ConfigError("optim.epochs must be > 0 when optim.max_steps is not set")
        if "." not in self.run.select_metric:
            raise ConfigError(
                f"run.select_metric={self.run.select_metric!r} must look like 't2v_dsl.R1' (table.metric)"
            )
        if self.run.select_on == "val" and not self.data.val and self.data.test:
            # Not an error: the run trains and reports test, but cannot select; say why in the log.
            pass
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Numeric ranges (floats are already finite): every key a typo or a sign error could break."""
        o, d, r, m = self.optim, self.data, self.run, self.model
        checks: list[tuple[str, Any, bool, str]] = [
            ("optim.lr", o.lr, o.lr > 0, "> 0"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
            ("optim.eps", o.eps, o.eps > 0, "> 0"),
            ("optim.lr_mul", o.lr_mul, o.lr_mul > 0, "> 0"),
            ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0, ">= 0 (0 = no clipping)"),
            ("optim.epochs", o.epochs, o.epochs > 0, "> 0"),
            ("optim.max_steps", o.max_steps, o.max_steps is None or o.max_steps >= 1, ">= 1 (or null: use epochs)"),
            ("data.num_workers", d.num_workers, d.num_workers >= 0, ">= 0"),
            ("data.image_text_weight", d.image_text_weight, d.image_text_weight >= 0, ">= 0"),
            ("model.eval_num_frames", m.eval_num_frames, m.eval_num_frames is None or m.eval_num_frames >= 1,
             ">= 1 (or null: model.num_frames)"),
            ("run.eval_every", r.eval_every, r.eval_every >= 0, ">= 0 (steps; 0 = every epoch)"),
            ("run.save_every", r.save_every, r.save_every >= 0, ">= 0 (steps; 0 = off)"),
            ("run.log_every", r.log_every, r.log_every >= 1, ">= 1 (steps)"),
        ]
        checks += [(f"optim.betas[{i}]", b, 0.0 <= b < 1.0, "in [0, 1)") for i, b in enumerate(o.betas)]
        checks += [(f"optim.lr_mult.{k}", v, v > 0, "> 0") for k, v in o.lr_mult.items()]
        for key, value, ok, want in checks:
            if not ok:
                raise ConfigError(f"{key} must be {want}, got {value!r}")
        if r.device is not None:
            import torch

            try:
                torch.device(r.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"run.device={r.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None

    def check_runtime(self) -> None:
        """What only this machine can answer: is ``run.device`` there? Called when training starts."""
        import torch

        if self.run.device is None:
            return
        dev = torch.device(self.run.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"run.device={self.run.device}: CUDA is not available on this machine "
                                  f"(use run.device=cpu, or leave it unset for the default)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(f"run.device={self.run.device}: only {torch.cuda.device_count()} CUDA "
                                  f"device(s) here")
        elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"run.device={self.run.device}: MPS is not available on this machine")


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "run": RunSection}


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1}); "
                                f"YAML would keep the last one silently", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


#: Keys that may change when a run is resumed: they change how the rest of the run is observed, saved or
#: executed, not what it learns. Any other difference is refused unless ``--allow-config-change`` is given.
SAFE_TO_CHANGE = frozenset({
    "optim.max_steps",  # extend or shorten the run (the schedule is recomputed for the new length)
    "run.eval_every", "run.save_every", "run.log_every", "run.progress", "run.eval_at_start",
    "run.output_dir", "run.resume", "run.device",
    "data.num_workers", "data.eval_batch_size", "data.root", "data.video_root", "data.generate_synthetic",
})


def flatten(cfg: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 1e-6, ...}``: one entry per recipe key."""
    data = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    return {f"{section}.{key}": value for section, fields in data.items() if isinstance(fields, Mapping)
            for key, value in fields.items()}


def config_changes(old: TrainConfig | Mapping[str, Any], new: TrainConfig) -> tuple[list[str], list[str]]:
    """Keys that differ between the config a run was started with and ``new``: ``(unsafe, safe)``, each
    ``"key: old -> new"``. Keys absent from ``old`` (added to the package since) count as unchanged when
    ``new`` has the default."""
    before, after = flatten(old), flatten(new)
    defaults = flatten(TrainConfig())
    unsafe, safe = [], []
    for key in sorted(after):
        was = before.get(key, defaults.get(key))
        if was != after[key] and not (isinstance(was, (int, float)) and isinstance(after[key], (int, float))
                                      and not isinstance(was, bool) and float(was) == float(after[key])):
            (safe if key in SAFE_TO_CHANGE else unsafe).append(f"{key}: {was!r} -> {after[key]!r}")
    return unsafe, safe


def _choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML value to the field's type (ints for floats, etc.), or raise naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # nan would silently disable every comparison it meets
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, e.g. {{name: value}}, got {value!r}")
        kt, vt = args if args else (str, Any)
        return {_coerce(f"{key} (key)", k, kt): _coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    return value


def _build_section(name: str, cls: type, data: Mapping[str, Any] | None) -> Any:
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                          f"known in '{name}': {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-5"`` -> (["optim", "lr"], 1e-05); the value is read with ``yaml.safe_load``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must be section.key (sections: {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
    return parts, value


def load_config(path_or_dict: str | Path | Mapping[str, Any] | None, overrides: Iterable[str] = ()
                ) -> TrainConfig:
    """Read a recipe (YAML path or dict), apply ``section.key=value`` overrides, validate.

    Unknown sections or keys are errors naming the key, so a misspelt override never trains with a default.
    """
    if path_or_dict is None:
        data: dict[str, Any] = {}
        where = "<defaults>"
    elif isinstance(path_or_dict, Mapping):
        data = {k: dict(v or {}) if isinstance(v, Mapping) else v for k, v in path_or_dict.items()}
        where = "<dict>"
    else:
        where = str(path_or_dict)
        try:
            text = Path(path_or_dict).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {where}: {exc.strerror or exc}") from None
        try:
            data = yaml.load(text, Loader=_StrictLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {where} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {where} must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    for name in SECTIONS:
        section = data.get(name)
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        data[name] = dict(section or {})
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override {text!r}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
        if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            known = ", ".join(sorted(f.name for f in dataclasses.fields(SECTIONS[section])))
            raise ConfigError(f"override {text!r}: unknown key {section}.{key}; known in '{section}': {known}")
        data[section][key] = value
    cfg = TrainConfig(**{name: _build_section(name, cls, data[name]) for name, cls in SECTIONS.items()})
    cfg.validate()
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-dict form (logged into every run folder as ``config.yaml``)."""
    return cfg.to_dict()
