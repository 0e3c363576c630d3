"""The model protocol and the registry that builds models by name (as timm's ``_registry``).

Every CTR model subclasses ``CTRModel`` and is registered with ``@register_model("name", aliases=(...))``; the trainer,
the exporter, the runtimes and the bundle only use what ``CTRModel`` declares.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.nn.embedding import FeatureEmbedding


class CTRModel(nn.Module):
    """What every model offers its callers.

    * constructor ``(layout: TableLayout, **hparams)``; the first statement records
      ``self.hparams = constructor_hparams(locals())`` (JSON values) so a bundle can rebuild the model;
    * ``self.embedding``: the one ``FeatureEmbedding`` (the shared table, the only sparse parameters);
    * ``forward(sparse [B, F] int64, dense [B, D] float32, seq [B, S, L] int64) -> logits [B]``;
    * optionally ``auxiliary_loss()``: an extra training objective made by the last forward (see there);
    * ``tasks``: () for a single-task model (logits ``[B]``, learned from one label); a multi-task model
      (``mmoe``, ``ple``, ``esmm``) names the dataset labels it learns, one logit column each: ``[B, T]``.

    ``model_name`` is set by ``register_model``.
    """

    model_name: ClassVar[str] = ""
    tasks: tuple[str, ...] = ()
    embedding: FeatureEmbedding
    hparams: dict[str, Any]

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def auxiliary_loss(self) -> Tensor | None:
        """The extra objective of the last forward in training mode, already weighted by the model's own
        hyper-parameter (DIEN's next-item loss times ``aux_weight``), or None; returned once (the reference
        is dropped). The trainer adds it to the click loss; in eval mode a model computes none, so it never
        reaches scoring or the exported graph. The default: no auxiliary objective."""
        return None


ModelClass = TypeVar("ModelClass", bound=type[CTRModel])
_MODELS: dict[str, type[CTRModel]] = {}
_ALIASES: dict[str, str] = {}  # alias -> registered name


def constructor_hparams(arguments: dict[str, object]) -> dict[str, object]:
    """A model's hyper-parameters from its constructor's ``locals()`` (taken first thing in ``__init__``):
    every argument but ``self`` and ``layout``, sequences as JSON lists, so a bundle can rebuild the model."""

    def plain(v: object) -> object:
        return [plain(x) for x in v] if isinstance(v, list | tuple) else v

    return {k: plain(v) for k, v in arguments.items() if k not in ("self", "layout", "__class__")}


def register_model(name: str, aliases: tuple[str, ...] = ()) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make the ``CTRModel`` subclass constructible as ``build_model(name, ...)``.

    ``aliases`` are other names users type for it (``wdl`` for ``wide_deep``); they resolve to ``name``
    everywhere (``build_model``, ``model_hparam_names``, ``ctrzoo train --model``), and bundles record ``name``.
    """

    def decorate(cls: ModelClass) -> ModelClass:
        if not (isinstance(cls, type) and issubclass(cls, CTRModel)):
            raise CtrzooError(f"model {name!r}: {cls!r} must subclass ctrzoo.models.CTRModel")
        if name in _MODELS and _MODELS[name] is not cls:
            raise CtrzooError(f"model name {name!r} is already registered by {_MODELS[name].__name__}")
        for taken in (name, *aliases):
            owner = _ALIASES.get(taken, name)
            if owner != name or (taken != name and taken in _MODELS):
                raise CtrzooError(f"model {name!r}: the name {taken!r} already refers to model "
                                  f"{owner if owner != name else taken!r}")
        _MODELS[name] = cls
        _ALIASES.update(dict.fromkeys(aliases, name))
        cls.model_name = name
        return cls

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted (aliases not included: see ``list_aliases``)."""
    return sorted(_MODELS)


def list_aliases() -> dict[str, str]:
    """Every alias and the registered name it stands for, sorted by alias."""
    return dict(sorted(_ALIASES.items()))


def resolve_model_name(name: str) -> str:
    """The registered name ``name`` refers to: itself, or the model an alias stands for. Case, surrounding
    spaces and ``-`` versus ``_`` do not matter (``DCN-V2`` is ``dcn_v2``, an alias of ``dcnv2``); an unknown
    name raises CtrzooError listing the known models and aliases."""
    if name in _MODELS:
        return name
    key = name.strip().lower().replace("-", "_")
    if key in _MODELS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    aliases = ", ".join(f"{a} ({n})" for a, n in list_aliases().items())
    raise CtrzooError(f"unknown model {name!r}; known models: {', '.join(list_models())}"
                      + (f"; aliases: {aliases}" if aliases else ""))


def model_hparam_names(name: str) -> list[str]:
    """The hyper-parameters ``build_model(name, ...)`` accepts."""
    params = inspect.signature(_get(name).__init__).parameters
    return [p for p in params if p not in ("self", "layout")]


def model_tasks(name: str, hparams: dict[str, Any]) -> tuple[str, ...]:
    """The tasks ``build_model(name, layout, **hparams)`` learns: ``hparams["tasks"]``, else the constructor's
    default; ``()`` for a model without a ``tasks`` hyper-parameter (single-task)."""
    if "tasks" in hparams:
        return tuple(str(t) for t in hparams["tasks"])
    param = inspect.signature(_get(name).__init__).parameters.get("tasks")
    if param is None or param.default is inspect.Parameter.empty:
        return ()
    return tuple(str(t) for t in param.default)


def is_multitask(name: str) -> bool:
    """Whether the registered model ``name`` (or alias) learns several labels: it takes ``tasks``."""
    return "tasks" in model_hparam_names(name)


def build_model(name: str, layout: TableLayout, **hparams: object) -> CTRModel:
    """Construct the registered model ``name`` (or an alias) for ``layout``; unknown names or hparams raise
    CtrzooError."""
    accepted = model_hparam_names(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise CtrzooError(
            f"model {name!r} does not accept hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return _get(name)(layout, **hparams)


def _get(name: str) -> type[CTRModel]:
    return _MODELS[resolve_model_name(name)]
