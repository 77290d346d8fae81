"""Run configuration: pydantic schemas, YAML files and ``--set key=value`` overrides.

Precedence: schema defaults < ``--config FILE`` < command-line flags < ``--set`` overrides.
Unknown keys and out-of-range values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rsseg.errors import ConfigError, InputError


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which smp architecture to build (``rsseg.models.factory.ModelSpec`` minus the shapes)."""

    arch: str = "unet"
    encoder: str = "resnet18"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Section):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(1e-5, ge=0)
    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    min_lr: float = Field(4e-8, ge=0)  # cosine floor
    gamma: float = Field(0.98, gt=0, le=1)  # exponential decay per epoch


DURATION_FORMS = "90s, 45m, 2h, 1h30m, 1:30:00 or plain seconds"
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNITS = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):([0-5]\d(?:\.\d*)?)")  # h:mm:ss or m:ss


def _duration_problem(value: Any) -> tuple[float | None, str]:
    """``(seconds, "")`` or ``(None, what is wrong)`` for :func:`parse_duration`."""
    text = str(value).strip().lower().replace(" ", "")
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif _NUMBER.fullmatch(text):
        seconds = float(text)
    elif (units := _UNITS.fullmatch(text)) and any(units.groups()):
        seconds = sum(float(g or 0) * f for g, f in zip(units.groups(), (3600, 60, 1),
                                                           strict=True))
    elif clock := _CLOCK.fullmatch(text):
        h, m, s = clock.groups()
        seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    if seconds is None:
        return None, f"{value!r} is not a duration (use e.g. {DURATION_FORMS})"
    if not math.isfinite(seconds) or seconds <= 0:
        return None, f"{value!r} must be a positive duration (use e.g. {DURATION_FORMS})"
    return seconds, ""


def parse_duration(value: str | float, name: str = "--max-time") -> float:
    """Seconds from ``90s``, ``45m``, ``2h``, ``1h30m``, ``1:30:00`` (h:mm:ss), ``5:00``
    (m:ss) or plain seconds; an :class:`InputError` naming ``name`` and the forms otherwise."""
    seconds, problem = _duration_problem(value)
    if seconds is None:
        raise InputError(f"{name} {problem}")
    return seconds


def _duration(value: Any) -> Any:
    """BeforeValidator of ``trainer.max_time``: the forms of :func:`parse_duration`."""
    if value is None:
        return None
    seconds, problem = _duration_problem(value)
    if seconds is None:
        raise PydanticCustomError("duration", problem)  # no context: the text is not formatted
    return seconds


class TrainerConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    channels_last: bool = True  # convolutions in NHWC memory format (oneDNN/cuDNN fast paths)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    seed: int = 0
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the data
    log_every_n_steps: int = Field(10, ge=1)
    # Wall-clock budget in seconds (also "45m", "2h", "1:30:00"): training stops there with a
    # checkpoint and the LR schedule completes by then; epochs stays an upper bound. None: off.
    max_time: Annotated[float | None, BeforeValidator(_duration)] = None


class PretrainData(Section):
    view_size: int = Field(128, ge=16)
    diagnostic_samples: int = Field(256, ge=8)  # tiles embedded each epoch for the spectrum


class PretextConfig(Section):
    name: str = "glcnet"
    params: dict[str, Any] = Field(default_factory=dict)


class PretrainConfig(Section):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        arch="deeplabv3plus", encoder="resnet18",
        kwargs={"encoder_output_stride": 16, "decoder_atrous_rates": [6, 12, 18],
                "decoder_aspp_separable": False}))
    pretext: PretextConfig = Field(default_factory=PretextConfig)
    data: PretrainData = Field(default_factory=PretrainData)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


class FinetuneData(Section):
    crop_size: int = Field(64, ge=16)
    val_fraction: float = Field(0.2, ge=0, lt=1)  # of labelled blocks/tiles held out
    val_block: int = Field(32, ge=4)  # side of the spatial blocks split between train and val
    label_fraction: float = Field(1.0, gt=0, le=1)  # of labelled tiles used (tile folders)
    group: str | None = None  # regex on tile stems; a group never straddles train and val
    max_centres: int = Field(200_000, ge=100)  # labelled pixels kept as crop centres
    # Training crops: a centre of class k is drawn ∝ n_k^-balance (0: every labelled pixel
    # alike, 1: every class alike); jitter: per-band random gain and offset, N(0, jitter) in
    # normalised units (radiometric augmentation, safe for any band count; 0 = off).
    balance: float = Field(0.0, ge=0, le=1)
    jitter: float = Field(0.0, ge=0, le=1)
    # Probability that one random band of a training crop is missing (at its mean, as a band's
    # nodata enters) while the others stay valid (a band's footprint ending before the others',
    # e.g. Landsat-7 band 7); 0 = off.
    band_dropout: float = Field(0.0, ge=0, le=1)


class SupervisedLoss(Section):
    """The supervised loss on labelled pixels: plain, class-balanced or focal cross-entropy.

    ``balanced_ce`` weighs class ``k`` by ``(1 − β) / (1 − β^n_k)`` (Cui et al., CVPR 2019;
    ``n_k`` = labelled training pixels of the class), normalised to mean 1 over the classes;
    ``focal`` is ``−(1 − p_t)^γ · log p_t`` (Lin et al., ICCV 2017), mean over labelled pixels.
    """

    name: Literal["ce", "balanced_ce", "focal"] = "ce"
    beta: float = Field(0.9999, ge=0, lt=1)
    gamma: float = Field(2.0, ge=0, le=10)


class DomainSource(Section):
    """One labelled dataset ("domain") of a multi-domain fine-tuning run (``multidomain``).

    Either ``tiles`` (a tile folder with images/ and labels/) or ``scenes`` with ``labels``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    tiles: Path | None = None
    scenes: list[Path] = Field(default_factory=list)
    labels: Path | None = None
    label_column: str | None = None
    classes: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DomainSource:
        if bool(self.tiles) == bool(self.scenes):
            raise ValueError(f"domain {self.name!r} needs either tiles or scenes (with labels)")
        if self.scenes and self.labels is None:
            raise ValueError(f"domain {self.name!r}: scenes need labels")
        return self


def _method_table(value: Any) -> Any:
    """``[supcon, {name: multidomain, params: {...}}]`` → ``{supcon: {}, multidomain: {...}}``."""
    if not isinstance(value, list):
        return value
    table: dict[str, Any] = {}
    for item in value:
        if isinstance(item, str):
            table[item] = {}
        elif isinstance(item, dict) and set(item) <= {"name", "params"} and "name" in item:
            table[str(item["name"])] = item.get("params") or {}
        else:
            raise ValueError(f"a regularizer is a name or {{name, params}}, not {item!r}")
    return table


class FinetuneConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: FinetuneData = Field(default_factory=FinetuneData)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(
        lr=1e-4, schedule="exponential", gamma=0.98, weight_decay=0.0))
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(epochs=150))
    tile: int = Field(256, ge=16)  # default predict window stored in the bundle
    overlap: int = Field(64, ge=0)
    # The encoder learns at encoder_lr_scale × optim.lr, the decoder and head at optim.lr
    # (discriminative fine-tuning), with or without --init alike; 1 = one learning rate.
    encoder_lr_scale: float = Field(1.0, gt=0, le=1)
    # With --init, also start the decoder from the one the pretext trained (GLCNet's local
    # branch; the official code's --load_self_parameters 2). False: the paper's protocol, encoder
    # + ASPP only. A run whose pretext left the decoder untrained (SimCLR) gives none.
    init_decoder: bool = False
    # Exponential moving average of the weights (decay per step, e.g. 0.99): validation scores
    # and the bundle holds the average instead of the last weights; 0 = off.
    ema: float = Field(0.0, ge=0, lt=1)
    loss: SupervisedLoss = Field(default_factory=SupervisedLoss)
    # Fine-tuning methods (``rsseg methods``: kind regularizer) by name → their params; YAML may
    # also list names (``regularizers: [supcon]``). ``--set regularizers.supcon.weight=0.2``.
    regularizers: Annotated[dict[str, dict[str, Any]],
                            BeforeValidator(_method_table)] = Field(default_factory=dict)
    domains: list[DomainSource] = Field(default_factory=list)  # several datasets: multidomain


C = TypeVar("C", bound=Section)


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not key=value", "e.g. --set optim.lr=0.001")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as err:  # unclosed brackets, a !!python tag (never executed)...
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})",
                          "quote it or fix its brackets, e.g. --set optim.betas=[0.9,0.99]"
                          ) from None


def _merge(base: dict[str, Any], keys: list[str], value: Any) -> None:
    node = base
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def load_config(schema: type[C], path: str | Path | None = None,
                sets: list[str] | None = None, flags: dict[str, Any] | None = None) -> C:
    """Build a validated config from defaults, a YAML file, CLI flags and ``--set`` items.

    ``flags`` maps dotted keys to values given as dedicated CLI flags (None = not given).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} not found", "check --config")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of config sections")
    for dotted, value in (flags or {}).items():
        if value is not None:
            _merge(data, dotted.split("."), value)
    for item in sets or []:
        keys, value = _parse_set(item)
        _merge(data, keys, value)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"config key {key!r}: {first['msg']}",
                          f"see the {schema.__name__} defaults in configs/") from None


def config_error(subject: str, schema: type[BaseModel], err: ValidationError) -> ConfigError:
    """One-line error of ``subject`` (e.g. ``method 'glcnet'``) naming the first bad key of
    ``err`` and what it accepts: the valid keys of an unknown one, the range of a bad value."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        owner = _owner(schema, first["loc"][:-1])
        return ConfigError(f"{subject}: unknown config key {key!r}",
                           fix=f"valid keys: {', '.join(owner.model_fields)}")
    if not key:
        return ConfigError(f"{subject}: {first['msg']}")
    field = _owner(schema, first["loc"][:-1]).model_fields.get(str(first["loc"][-1]))
    bounds = _bounds(field.metadata) if field is not None else ""
    return ConfigError(f"{subject}: {key}={first['input']!r} is invalid ({first['msg']})",
                       fix=f"allowed: {bounds}" if bounds else None)


def _bounds(metadata: list[Any]) -> str:
    """``"0 < x ≤ 1"``-style text from a field's annotated-types constraints ("" if none)."""
    low = high = ""
    for item in metadata:
        for attr, text in (("gt", "{} < "), ("ge", "{} ≤ ")):
            if getattr(item, attr, None) is not None:
                low = text.format(getattr(item, attr))
        for attr, text in (("lt", " < {}"), ("le", " ≤ {}")):
            if getattr(item, attr, None) is not None:
                high = text.format(getattr(item, attr))
    return f"{low}x{high}" if low or high else ""


def _owner(schema: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The (nested) model that ``loc`` points into."""
    for part in loc:
        annotation = schema.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        schema = annotation
    return schema


def dump_config(config: Section, path: Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
