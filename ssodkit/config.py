"""Run configuration: pydantic models, YAML recipes, CLI overrides.

Precedence: model defaults < recipe YAML (with optional `_base_` chain) < CLI flags <
`--set section.key=value`. Every value is validated; a bad one gives one line naming the
field, the value and why. The resolved config is saved in the run folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ssodkit.detectors.config import DetectorConfig
from ssodkit.errors import ConfigError
from ssodkit.views.config import ViewConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images and annotations are. No paths → the embedded synthetic data set."""

    train_ann: Path | None = Field(None, description="labeled COCO JSON")
    train_images: Path | None = Field(None, description="image root of train_ann")
    val_ann: Path | None = None
    val_images: Path | None = None
    unlabeled: Path | None = Field(None, description="COCO JSON (annotations ignored) or image folder")
    unlabeled_images: Path | None = None
    labeled_percent: float | None = Field(
        None, gt=0, lt=100, description="split train_ann COCO-standard style before training"
    )
    fold: int = Field(1, ge=1, description="seed of the labeled split (1..5 in the literature)")
    repeat_factor_t: float | None = Field(
        None, ge=0, description="Labeled Resampling threshold t; None = the method's default "
        "(MixPL 0.001, others off), 0 = off"
    )
    synthetic_seed: int = 0
    synthetic_kind: Literal["shapes", "fine"] = Field(
        "shapes", description="which synthetic data set (synthetic mode): shapes, or fine "
        "(classes differ only by a small detail; see docs/data.md)"
    )
    skip_invalid: bool = False
    strict_images: bool = Field(
        False, description="stop at the first image that cannot be decoded during training "
        "or evaluation instead of skipping it (with a warning) and counting it"
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="data-loading worker processes per stream (labeled, unlabeled); auto: "
        "(CPUs per process − 1) // 2, between 1 and 8 (see resolve_num_workers)"
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | str:
        if value == "auto":
            return value
        try:
            workers = int(value)
        except (TypeError, ValueError):
            workers = -1
        if workers < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"must be a whole number ≥ 0 or 'auto', got {value!r}")
        return workers

    @property
    def synthetic(self) -> bool:
        return self.train_ann is None


class MethodConfig(BaseModel):
    """The SSOD method's name plus its own parameters.

    The parameters are the method's `Params` model: `resolve_method` validates them when the
    config is loaded (an unknown or ill-typed key fails before any data is read) and writes
    every value back, defaults included, so the saved `config.yaml` holds what the run used.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "supervised"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


BURN_IN_MAX_CAP = 2000  # the default teacher.burn_in_max: half the schedule, at most this


class TeacherConfig(_Section):
    """The EMA teacher, which the trainer owns: θ_t ← (1 − m)·θ_t + m·θ_s after each step.

    A field left unset takes the method's declared default (`Method.teacher_defaults`, e.g.
    Unbiased Teacher's keep-rate 0.9996 and burn-in 2000), then the value below; the saved
    config holds the resolved values. Methods without a teacher ignore this section.
    """

    momentum: float | None = Field(
        None, gt=0, le=1, description="constant m; null = the schedule max(min_momentum, γ/(γ+t))"
    )
    gamma: float = Field(4.0, gt=0, description="γ of the schedule (MixPL: 4)")
    min_momentum: float = Field(2e-4, gt=0, le=1, description="floor of the schedule")
    buffers: Literal["copy", "ema", "skip"] = Field(
        "ema", description="BatchNorm statistics: averaged like the weights (Unbiased Teacher), copied from the "
        "student, or left alone (mmdet, whose backbone BN is frozen)"
    )
    interval: int = Field(1, ge=1, description="update the teacher after every N-th step (MixPL: 3)")
    schedule_offset: int | None = Field(
        None, ge=0, description="t of the schedule at this run's iteration 0; null = the iterations the "
        "--init-from checkpoint's student trained (0 without one): t counts every iteration the student has "
        "trained, so a teacher made from a trained model starts slow, as MixPL's would at that point of training"
    )
    burn_in: int | Literal["auto"] = Field(
        0, description="supervised-only iterations; the teacher copies the student until then. "
        "auto = until the labeled probe's pseudo-labels are precise and their recall stops rising"
    )
    burn_in_max: int | None = Field(
        None, ge=1, description="auto: end the burn-in here at the latest; null = half of schedule.iters, "
        f"at most {BURN_IN_MAX_CAP}"
    )
    burn_in_check: int = Field(100, gt=0, description="auto: probe every N iterations during burn-in")
    burn_in_precision: float = Field(
        0.5, ge=0, le=1, description="auto: the probe's pseudo-label precision (IoU 0.5, at τ) must reach this"
    )
    burn_in_patience: int = Field(
        2, ge=1, description="auto: … and its recall must not have risen over the last N probes"
    )
    burn_in_min_delta: float = Field(0.01, ge=0, description="auto: a recall rise of at most this is no rise")

    @field_validator("burn_in", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        """One line for a bad value, not one per member of the union."""
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError("must be an iteration count ≥ 0 or 'auto'")


class OptimConfig(_Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(20.0, gt=0, description="max grad norm; null disables")


class ScheduleConfig(_Section):
    iters: int = Field(600, gt=0)
    warmup_iters: int = Field(100, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    policy: Literal["constant", "step", "cosine"] = "cosine"
    steps: list[int] = Field(default_factory=list, description="iterations of lr drops (step)")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine floor, fraction of lr")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.warmup_iters > self.iters and "warmup_iters" not in self.model_fields_set:
            self.__dict__["warmup_iters"] = self.iters // 10  # a short run keeps a short warm-up
        if self.warmup_iters > self.iters:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) > iters ({self.iters})")
        if any(s <= 0 or s > self.iters for s in self.steps):
            raise ValueError(f"steps {self.steps} must lie in 1..iters ({self.iters})")
        return self


class TrainConfig(_Section):
    batch_size: int = Field(8, gt=0, description="labeled images per step and device")
    unlabeled_batch_size: int | None = Field(
        None, ge=0, description="unlabeled images per step and device; None = 4 × batch_size (1:4)"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    seed: int = 0
    log_interval: int = Field(10, gt=0)
    init_from: Path | None = Field(
        None, description="start from this checkpoint's detector weights (the ones inference uses: the model "
        "a best.pt records as the better one, else the teacher, else the student); optimiser, schedule and "
        "iteration start fresh — e.g. SSOD from a supervised run"
    )
    checkpoint_interval: int = Field(200, gt=0)
    deterministic: bool = False
    stop_on_collapse: bool = Field(
        False, description="stop the run (saving last.pt; best.pt keeps the best model) when the collapse "
        "watcher warns (docs/troubleshooting.md)"
    )

    @property
    def unlabeled_per_step(self) -> int:
        """Unlabeled images per step: the SSOD literature's 1:4 unless set."""
        return 4 * self.batch_size if self.unlabeled_batch_size is None else self.unlabeled_batch_size


class EvalConfig(_Section):
    interval: int = Field(200, gt=0, description="evaluate every N iterations (and at the end)")
    batch_size: int = Field(8, gt=0)
    backend: Literal["auto", "faster_coco_eval", "pycocotools"] = "auto"
    max_images: int | None = Field(None, gt=0, description="evaluate on the first N val images")
    pseudo_images: int = Field(
        100, ge=0, description="unlabeled images whose pseudo-labels are scored against hidden "
        "ground truth at each eval (benchmark mode; 0 = off)"
    )
    probe_images: int = Field(
        32, ge=0, description="labeled images (still trained on) pseudo-labeled as unlabeled ones are and "
        "scored against their own boxes at each eval (probe/… metrics; teacher.burn_in: auto reads it; 0 = off)"
    )


class OutputConfig(_Section):
    runs_dir: Path = Path("runs")
    name: str | None = Field(None, description="run folder name; default <method>-<detector>[-N]")
    plots: bool = Field(True, description="write results.png at each evaluation (results.csv and summary.json always)")
    samples: int = Field(
        4, ge=0, le=16, description="unlabeled images drawn with the teacher's boxes in samples/iter_<N>.jpg at "
        "each evaluation (0 = none)"
    )
    tensorboard: bool = Field(
        False, description="also log scalars and the sample grid to <run>/tensorboard (pip install 'ssodkit[tensorboard]')"
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str | None) -> str | None:
        """The run folder stays inside runs_dir: `../x` or `a/b` would write elsewhere."""
        if name is not None and (
            name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0"))
        ):
            raise ValueError("must be one folder name, without '/', '\\' or '..'; put the parent in --runs-dir")
        return name


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewConfig = Field(default_factory=ViewConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe, following `_base_: other.yaml` (relative to the recipe) first; a list
    of bases is merged in order, later ones winning (e.g. a recipe, then the per-class
    thresholds that `stats pseudo --calibrate` wrote)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: recipe includes itself through _base_")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    bases = [base] if isinstance(base, str) else base or []
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a recipe file name or a list of them, got {base!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = deep_merge(merged, load_recipe(path.parent / name, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. optim.lr=0.02)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _in_other_sections(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """`section.key` of every other top-level section with this exact key: `train.iters`
    is `schedule.iters`, `train.lr` is `optim.lr`."""
    if len(loc) != 2:
        return []
    return [
        f"{section}.{loc[1]}"
        for section in model.model_fields
        if section != loc[0] and str(loc[1]) in _field_names(model, (section, loc[1]))
    ]


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line per problem: `field = value: why`, with close matches for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _field_names(model, loc), n=1)
            close = close or _in_other_sections(model, loc)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"unknown config key '{name}'{hint}")
        else:
            lines.append(f"{name} = {err.get('input')!r}: {err['msg']}")
    return "invalid config: " + "; ".join(lines)


def build_config(
    recipe: Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Merge recipe, CLI flags (dotted keys, None = not given) and `--set` overrides."""
    data: dict[str, Any] = load_recipe(recipe) if recipe else {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            apply_override(data, dotted.split("."), value)
    for text in overrides or []:
        apply_override(data, *parse_override(text))
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig)) from None
    return resolve_method(cfg)


# Method keys that became `teacher.*` keys when the trainer took the EMA over from the methods.
MOVED_TO_TEACHER = {
    "ema_momentum": "momentum",
    "ema_gamma": "gamma",
    "ema_min_momentum": "min_momentum",
    "ema_buffers": "buffers",
    "burn_in": "burn_in",
}


def migrate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version (a run folder or checkpoint), brought up to date:
    `detector.freeze_bn: false` where the key is missing (the backbone's BatchNorm always
    trained then, pretrained or not), and the `method.ema_*` / `method.burn_in` keys of a
    config from before the `teacher` section existed moved there."""
    detector = data.get("detector")
    if isinstance(detector, dict) and "freeze_bn" not in detector:
        data = {**data, "detector": {**detector, "freeze_bn": False}}
    method = data.get("method")
    if not isinstance(method, dict) or not set(method) & set(MOVED_TO_TEACHER):
        return data
    method, teacher = dict(method), dict(data.get("teacher") or {})
    for old, new in MOVED_TO_TEACHER.items():
        if old in method:
            teacher.setdefault(new, method.pop(old))
    return {**data, "method": method, "teacher": teacher}


def resolve_method(cfg: RunConfig) -> RunConfig:
    """Validate the method's parameters against its `Params` model and resolve the teacher
    section; return the config with every value written out (defaults included).

    Detector-dependent values (a pseudo-label threshold of `null`) are resolved later, once,
    when the detector is built (`resolve_for_detector`)."""
    from ssodkit.plugins import method_class

    method = method_class(cfg.method.name)
    moved = sorted(set(cfg.method.params) & set(MOVED_TO_TEACHER))
    if moved:
        hints = ", ".join(f"'method.{k}' is now 'teacher.{MOVED_TO_TEACHER[k]}'" for k in moved)
        raise ConfigError(f"invalid config: {hints}")
    try:
        params = method.Params.model_validate(cfg.method.params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, method.Params, prefix="method.")) from None
    method.check_config(cfg, params)
    teacher = {**method.teacher_defaults, **cfg.teacher.model_dump(include=cfg.teacher.model_fields_set)}
    try:
        resolved_teacher = TeacherConfig.model_validate({**cfg.teacher.model_dump(), **teacher})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TeacherConfig, prefix="teacher.")) from None
    if resolved_teacher.burn_in == "auto" and cfg.eval.probe_images == 0:
        raise ConfigError("invalid config: teacher.burn_in = 'auto' reads the labeled probe; set eval.probe_images > 0")
    if resolved_teacher.burn_in == "auto" and resolved_teacher.burn_in_max is None:
        default_max = max(1, min(BURN_IN_MAX_CAP, cfg.schedule.iters // 2))
        resolved_teacher = resolved_teacher.model_copy(update={"burn_in_max": default_max})
    detector_defaults = {k: v for k, v in method.detector_defaults(params).items() if k not in cfg.detector.model_fields_set}
    detector = cfg.detector
    if detector_defaults:
        try:
            detector = DetectorConfig.model_validate({**cfg.detector.model_dump(), **detector_defaults})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, DetectorConfig, prefix="detector.")) from None
    return cfg.model_copy(update={
        "method": method_config(cfg.method.name, params), "teacher": resolved_teacher, "detector": detector,
    })


def method_config(name: str, params: BaseModel) -> MethodConfig:
    """A `MethodConfig` holding every value of `params` (what `config.yaml` records)."""
    return MethodConfig(name=name, **params.model_dump(mode="json"))


def save_config(cfg: RunConfig, path: Path) -> None:
    from ssodkit.io import write_text_atomic

    write_text_atomic(path, cfg.to_yaml())


def load_saved_config(path: Path) -> RunConfig:
    """A run folder's `config.yaml` (an earlier version's included), validated and resolved."""
    try:
        cfg = RunConfig.model_validate(migrate_legacy(_read_yaml(path)))
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + format_validation_error(exc, RunConfig)) from None
    try:
        return resolve_method(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
