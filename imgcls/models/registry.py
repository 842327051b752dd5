"""One registry of model names and one factory, `create_model`."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

from imgcls.errors import ImgclsError

_REGISTRY: dict[str, type] = {}
_PREFIXES: dict[str, Callable[[str], type]] = {}   # "timm:" -> makes a class for "timm:<name>"


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a classifier buildable by name."""
    def add(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls
    return add


def register_prefix(prefix: str, make_class: Callable[[str], type]) -> None:
    """Names starting with prefix are built on first use by make_class(name), e.g. timm:resnet18."""
    _PREFIXES[prefix] = make_class


def list_models() -> dict[str, type]:
    return dict(sorted(_REGISTRY.items()))


def model_class(name: str) -> type:
    prefix = next((p for p in _PREFIXES if name.startswith(p) and len(name) > len(p)), None)
    if name not in _REGISTRY and prefix:
        cls = _PREFIXES[prefix](name)
        cls.model_name = name
        return cls
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        prefixes = "".join(f", {p}NAME" for p in _PREFIXES)
        raise ImgclsError(f"unknown model {name!r}{hint}; valid models: {', '.join(sorted(_REGISTRY))}{prefixes}")
    return _REGISTRY[name]


def create_model(name: str, **params):
    """Build a classifier by registry name; unknown names and unknown parameters are errors."""
    cls = model_class(name)
    valid = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ImgclsError(f"model {name!r} has no parameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    model = cls(**params)
    model.check()
    return model
