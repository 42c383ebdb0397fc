"""Method name -> mixer class: the values the API accepts as an experiment's ``method``.

A new method is one module: a ``Mixer`` subclass decorated with ``@register``. The lookups are
typed by mode, so callers get an ``OfflineMixer`` or an ``OnlineMixer`` without a cast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from mixers.base import Mixer, Mode

if TYPE_CHECKING:
    from mixers.offline.base import OfflineMixer
    from mixers.online.base import OnlineMixer

__all__ = [
    "get_method",
    "methods",
    "offline_method",
    "offline_methods",
    "online_method",
    "online_methods",
    "register",
]

M = TypeVar("M", bound=type[Mixer[Any]])

_OFFLINE: dict[str, type[OfflineMixer[Any]]] = {}
_ONLINE: dict[str, type[OnlineMixer[Any]]] = {}


def _add(table: dict[str, Any], name: str, cls: type[Mixer[Any]], mode: str) -> None:
    if table.get(name, cls) is not cls:
        raise ValueError(f"method {name!r} ({mode}) is registered twice")
    table[name] = cls


def register(cls: M) -> M:
    """Class decorator: make a mixer selectable by its ``name`` in its ``mode``."""
    # Imported here: the method modules import this one while their packages load.
    from mixers.offline.base import OfflineMixer
    from mixers.online.base import OnlineMixer

    if issubclass(cls, OfflineMixer) and cls.mode == "offline":
        _add(_OFFLINE, cls.name, cls, cls.mode)
    elif issubclass(cls, OnlineMixer) and cls.mode == "online":
        _add(_ONLINE, cls.name, cls, cls.mode)
    else:
        raise TypeError(f"{cls.__name__} is neither an OfflineMixer nor an OnlineMixer")
    return cls


def _load_builtin() -> None:
    # Imported for their @register side effect; late so that registry has no import cycle.
    import mixers.offline
    import mixers.online  # noqa: F401


def offline_method(name: str) -> type[OfflineMixer[Any]]:
    """The offline mixer class named ``name``; ``KeyError`` when there is none."""
    _load_builtin()
    return _OFFLINE[name]


def online_method(name: str) -> type[OnlineMixer[Any]]:
    """The online mixer class named ``name``; ``KeyError`` when there is none."""
    _load_builtin()
    return _ONLINE[name]


def get_method(mode: Mode, name: str) -> type[Mixer[Any]]:
    """The mixer class for ``name`` in ``mode``; ``KeyError`` when there is none."""
    return offline_method(name) if mode == "offline" else online_method(name)


def offline_methods() -> list[type[OfflineMixer[Any]]]:
    """Every registered offline method, by name."""
    _load_builtin()
    return [_OFFLINE[n] for n in sorted(_OFFLINE)]


def online_methods() -> list[type[OnlineMixer[Any]]]:
    """Every registered online method, by name."""
    _load_builtin()
    return [_ONLINE[n] for n in sorted(_ONLINE)]


def methods() -> list[type[Mixer[Any]]]:
    """Every registered method, offline first, then by name."""
    return [*offline_methods(), *online_methods()]
