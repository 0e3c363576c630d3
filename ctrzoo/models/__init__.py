"""Model registry: each CTR model is one module that registers its class under a name.

``build_model(name, layout, **hparams)`` constructs any registered model; every model takes
``(layout, **hparams)``, exposes its effective ``hparams`` (JSON-serializable) so a bundle can rebuild it,
keeps its shared ``FeatureEmbedding`` as ``.embedding``, and maps ``forward(sparse, dense, seq)`` to
logits ``[B]``. A new model is one file plus one import line below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout

_MODELS: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def constructor_hparams(arguments: dict[str, object]) -> dict[str, object]:
    """A model's hyper-parameters from its constructor's ``locals()`` (taken first thing in ``__init__``):
    every argument but ``self`` and ``layout``, sequences as JSON lists, so a bundle can rebuild the model."""

    def plain(v: object) -> object:
        return [plain(x) for x in v] if isinstance(v, list | tuple) else v

    return {k: plain(v) for k, v in arguments.items() if k not in ("self", "layout", "__class__")}


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make the model constructible as ``build_model(name, ...)``."""

    def decorate(cls: ModelClass) -> ModelClass:
        if name in _MODELS and _MODELS[name] is not cls:
            raise CtrzooError(f"model name {name!r} is already registered by {_MODELS[name].__name__}")
        _MODELS[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_hparam_names(name: str) -> list[str]:
    """The hyper-parameters ``build_model(name, ...)`` accepts."""
    cls = _get(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "layout")]


def build_model(name: str, layout: TableLayout, **hparams: object) -> nn.Module:
    """Construct the registered model ``name`` for ``layout``; unknown names or hparams raise CtrzooError."""
    accepted = model_hparam_names(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise CtrzooError(
            f"model {name!r} does not accept hyper-parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return _get(name)(layout, **hparams)


def _get(name: str) -> type[nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise CtrzooError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


# Importing the model modules registers them (they import register_model from this module).
from ctrzoo.models.dcn import DCN  # noqa: E402
from ctrzoo.models.deepfm import DeepFM  # noqa: E402
from ctrzoo.models.din import DIN  # noqa: E402
from ctrzoo.models.wide_deep import WideDeep  # noqa: E402

__all__ = [
    "DCN",
    "DIN",
    "DeepFM",
    "WideDeep",
    "build_model",
    "list_models",
    "model_hparam_names",
    "register_model",
]
