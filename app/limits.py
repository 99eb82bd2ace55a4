"""Request bodies bounded by the running settings.

A body is defined once, as a msgspec Struct (``app/schemas.py``). A bound that
a setting gives (items per request, id length...) is written on its field as
:class:`Limit` metadata, next to the field's fixed ``msgspec.Meta``;
:func:`bounded` makes the struct under one ``Settings``, with every limit
turned into the ``msgspec.Meta`` of the running value. Its decoder then checks
the whole body in C, and its JSON schema, the OpenAPI document's, states the
values the service enforces.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec

from trainer.core.settings import Settings

Body = TypeVar("Body", bound=msgspec.Struct)


@dataclass(frozen=True)
class Limit:
    """``Annotated`` metadata: the ``msgspec.Meta`` a field takes from the settings. It must set
    no constraint the field's own ``Meta`` sets (msgspec refuses two values for one)."""

    meta: Callable[[Settings], msgspec.Meta]


def bounded(body: type[Body], settings: Settings) -> type[Body]:
    """``body`` (and every struct within it) with its limits set to ``settings``' values."""
    made: dict[type, type] = {}
    bounded_body: type[Body] = _bounded(body, settings, made)
    return bounded_body


def _bounded(tp: Any, settings: Settings, made: dict[type, type]) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *metadata = get_args(tp)
        metadata = [m.meta(settings) if isinstance(m, Limit) else m for m in metadata]
        return Annotated[(_bounded(inner, settings, made), *metadata)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_bounded(member, settings, made) for member in get_args(tp))]  # noqa: UP007
    if origin in (list, tuple):
        return origin[tuple(arg if arg is Ellipsis else _bounded(arg, settings, made) for arg in get_args(tp))]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp not in made:
            made[tp] = _bounded_struct(tp, settings, made)
        return made[tp]
    return tp


def _bounded_struct(struct: type[msgspec.Struct], settings: Settings, made: dict[type, type]) -> type:
    """A subclass under the same name whose fields have the bounded types: decoded instances
    are still instances of ``struct``, and the document names it as the service does."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(struct):
        typed = _bounded(field.type, settings, made)
        if field.default is not msgspec.NODEFAULT:
            fields.append((field.name, typed, field.default))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append((field.name, typed, msgspec.field(default_factory=field.default_factory)))
        else:
            fields.append((field.name, typed))
    config = struct.__struct_config__
    subclass = msgspec.defstruct(
        struct.__name__,
        fields,
        bases=(struct,),
        module=struct.__module__,
        frozen=config.frozen,
        forbid_unknown_fields=config.forbid_unknown_fields,
        gc=config.gc,
    )
    subclass.__doc__ = struct.__doc__  # the document's description of the body
    return subclass
