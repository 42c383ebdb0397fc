"""Method name -> mixer class: the values the API accepts as an experiment's ``method``."""

from __future__ import annotations

from mixers.base import Mixer, Mode

__all__ = ["get_method", "methods", "register"]

_METHODS: dict[tuple[Mode, str], type[Mixer]] = {}


def register(cls: type[Mixer]) -> type[Mixer]:
    """Class decorator: make a mixer selectable by its ``name`` in its ``mode``."""
    key = (cls.mode, cls.name)
    if key in _METHODS and _METHODS[key] is not cls:
        raise ValueError(f"method {cls.name!r} ({cls.mode}) is registered twice")
    _METHODS[key] = cls
    return cls


def _load_builtin() -> None:
    # Imported for their @register side effect; late so that registry has no import cycle.
    import mixers.offline
    import mixers.online  # noqa: F401


def get_method(mode: Mode, name: str) -> type[Mixer]:
    """The mixer class for ``name`` in ``mode``; ``KeyError`` when there is none."""
    _load_builtin()
    return _METHODS[(mode, name)]


def methods() -> list[type[Mixer]]:
    """Every registered method, offline first, then by name."""
    _load_builtin()
    return [_METHODS[key] for key in sorted(_METHODS)]
