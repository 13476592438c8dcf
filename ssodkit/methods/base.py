"""The method protocol and the batch types a method receives.

The trainer owns everything that is the same for every method (loop, optimiser, AMP, DDP,
EMA, eval, checkpoints); a method owns what happens inside one step and returns a dict of
already-weighted loss terms whose sum is optimised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from ssodkit.detectors.dense import DenseOutputs
from ssodkit.detectors.protocol import Detections, Target, TwoStage, protocol_methods
from ssodkit.errors import ConfigError
from ssodkit.pseudo.labeler import PseudoLabeler

if TYPE_CHECKING:
    from ssodkit.config import RunConfig


@dataclass
class ViewBatch:
    """Images of one view on the training device, with their geometry and (pseudo) targets."""

    images: list[Tensor]  # float [3,H,W] in [0,1]
    targets: list[Target]  # boxes/labels in this view's pixels (empty for unlabeled data)
    matrices: list[Tensor]  # float64 [3,3], original → view
    image_ids: list[int]
    extras: list[dict[str, Any]] = field(default_factory=list)  # view-specific (e.g. erased rects)

    def __len__(self) -> int:
        return len(self.images)


class ModelHandle:
    """A model as a method sees it: the protocol's typed calls, each one call of the module's
    `forward(mode, …)`. For the student that keeps every call inside the one step forward
    DDP sees (`MethodStep`); the teacher is wrapped too, so both sides read the same.

    The capability calls (`dense`, `two_stage`) are there for detectors that have the
    capability; `check_capabilities` made sure of it at start-up, from the method's `requires`.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def _call(self, mode: str, *args: Any, **kwargs: Any) -> Any:
        """The one route into the model."""
        return self.module(mode, *args, **kwargs)

    def loss(self, images: list[Tensor], targets: list[Target], **kwargs: Any) -> dict[str, Tensor]:
        return self._call("loss", images, targets, **kwargs)

    def predict(self, images: list[Tensor]) -> list[Detections]:
        return self._call("predict", images)

    def dense(self, images: list[Tensor]) -> DenseOutputs:
        """`DenseHead.dense`."""
        return self._call("dense", images)

    @property
    def two_stage(self) -> TwoStage:
        return TwoStageHandle(self._call)


class TwoStageHandle(TwoStage):
    """`TwoStage` whose every method is one `call(mode, …)` of a model's forward; the
    methods are the protocol's own (typed there), generated below so that they cannot drift."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call


def _routed(mode: str) -> Callable[..., Any]:
    @functools.wraps(getattr(TwoStage, mode))  # the protocol's name, signature and docstring
    def method(self: TwoStageHandle, *args: Any, **kwargs: Any) -> Any:
        return self._call(mode, *args, **kwargs)

    return method


for _mode in protocol_methods(TwoStage):
    setattr(TwoStageHandle, _mode, _routed(_mode))


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    """Base of every SSOD method; subclasses set the class attributes and `step`."""

    name: ClassVar[str] = "method"
    requires: ClassVar[frozenset[type]] = frozenset()  # capability protocols (DenseHead, TwoStage)
    uses_teacher: ClassVar[bool] = False
    unlabeled_views: ClassVar[tuple[str, ...]] = ()  # view pipelines each unlabeled image gets
    Params: ClassVar[type[BaseModel]] = NoParams
    default_repeat_factor_t: ClassVar[float | None] = None  # Labeled Resampling off unless set
    # The method's defaults for the trainer's `teacher` section (keys of `TeacherConfig`):
    # declared here, applied by the config, run by the trainer — a method never runs the EMA.
    teacher_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def detector_defaults(cls, params: BaseModel) -> dict[str, Any]:
        """`detector.*` values this method's parameters need unless the user set them (PseCo's
        sigmoid-focal RoI classifier is read with `roi_scores: sigmoid`)."""
        return {}

    def __init__(self, params: BaseModel, cfg: RunConfig, class_names: list[str]) -> None:
        self.params = params
        self.cfg = cfg
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.stats: dict[str, float] = {}  # diagnostics of the last step (logged, not optimised)
        self.labeler: PseudoLabeler | None = None  # methods that threshold their teacher's boxes

    @classmethod
    def from_config(cls, cfg: RunConfig, class_names: list[str]) -> Method:
        from ssodkit.config import format_validation_error

        try:
            params = cls.Params.model_validate(cfg.method.params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls.Params, prefix="method.")) from None
        return cls(params, cfg, class_names)

    @classmethod
    def labeled_views(cls, params: BaseModel) -> tuple[str, ...]:
        """View pipelines each labeled image gets, as specs like `unlabeled_views`'
        (`"strong=ut_strong@weak"` continues the weak view's output). With several, the
        step's labeled batch holds every image once per view, view after view (so twice
        `train.batch_size` images for two views); the default is the one `labeled` view."""
        return ("labeled",)

    @classmethod
    def check_config(cls, cfg: RunConfig, params: BaseModel) -> None:
        """Refuse settings that contradict the rest of the run, when the config is loaded
        (before any data is read); raise `ConfigError` with one line."""
        if cls.unlabeled_views and cfg.train.unlabeled_per_step == 0:
            raise ConfigError(
                f"train.unlabeled_batch_size = 0: method '{cfg.method.name}' learns from unlabeled "
                "images; give at least 1 (default 4 × batch_size)"
            )

    def check_detector(self, detector: nn.Module) -> None:
        """Refuse a detector that cannot serve this method (beyond capabilities), at start-up."""

    def step(
        self,
        student: ModelHandle,
        teacher: nn.Module | None,
        labeled: ViewBatch,
        unlabeled: dict[str, ViewBatch] | None,
        it: int,
    ) -> dict[str, Tensor]:
        """The step's loss terms. `unlabeled` is None during the teacher's burn-in (the
        trainer decides it): the step is then supervised only."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def prefixed(losses: dict[str, Tensor], prefix: str, weight: float = 1.0) -> dict[str, Tensor]:
    """`{"loss_cls": x}` → `{"<prefix>_loss_cls": weight * x}` (names are what users see)."""
    return {f"{prefix}_{k}": weight * v for k, v in losses.items()}
