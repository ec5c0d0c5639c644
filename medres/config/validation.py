"""Schema walking and pydantic errors turned into ``ConfigError`` (dotted path, value, type, suggestion).

Private to ``medres.config``.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from medres.config.schema import Config
from medres.errors import ConfigError, did_you_mean

# ---------------------------------------------------------------------------------------------------
# schema walking


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def is_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (dict, Mapping):
        return True
    union = origin in (typing.Union, types.UnionType)
    return union and any(is_mapping(a) for a in typing.get_args(annotation))


def _type_name(annotation: Any) -> str:
    """A short readable type: ``int``, ``'sgd' | 'adamw'``, ``list of float | null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"{origin.__name__} of " + ", ".join(_type_name(a) for a in args if a is not Ellipsis)
    if origin is dict:
        return f"mapping {_type_name(args[0])} -> {_type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


_UNION_TAG = re.compile(r"(?:literal|dict|list|tuple)\[.*\]|str|int|float|bool")


def _walk(loc: Iterable[str | int]) -> tuple[str, Any, type[BaseModel] | None]:
    """(dotted path, annotation of the last field, model holding the last key) for a pydantic loc.

    Union-member tags that pydantic adds to a loc (``'str'``, ``'list[float]'``) are dropped.
    """
    parts: list[str] = []
    model: type[BaseModel] | None = Config
    holder: type[BaseModel] | None = Config
    annotation: Any = Config
    free = False  # inside a dict: every key is allowed
    for item in loc:
        if isinstance(item, str) and _UNION_TAG.fullmatch(item) and \
                typing.get_origin(annotation) in (typing.Union, types.UnionType):
            continue  # pydantic's name of the union member that failed (`x | dict[...]`): not a key
        if isinstance(item, int) or free:
            parts.append(str(item))
            free = False
        elif model is not None and _member(annotation, item) is not None:  # a tagged union's member
            model = holder = _member(annotation, item)
        elif model is not None and item in model.model_fields:
            holder = model
            annotation = model.model_fields[item].annotation
            parts.append(item)
            model = model_in(annotation)
            free = is_mapping(annotation)
        elif model is not None:  # a key the model does not have
            holder = model
            parts.append(str(item))
            model = None
        # else: a union-member tag pydantic adds ('str', 'list[float]'); not part of the path
    return ".".join(parts), annotation, holder


def _member(annotation: Any, tag: str) -> type[BaseModel] | None:
    """The model of a discriminated union (``tasks``) whose ``type`` literal is ``tag``, or None."""
    members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    members += [m for a in typing.get_args(annotation) if not isinstance(a, type)
                for m in [_member(a, tag)] if m is not None]
    for m in members:
        field = m.model_fields.get("type")
        if field is not None and tag in typing.get_args(field.annotation):
            return m
    return None


def _tags(annotation: Any) -> list[str]:
    """The ``type`` literals of a discriminated union's members, in order."""
    out: list[str] = []
    for a in typing.get_args(annotation):
        field = a.model_fields.get("type") if isinstance(a, type) and issubclass(a, BaseModel) else None
        out += [t for t in (typing.get_args(field.annotation) if field else _tags(a)) if t not in out]
    return out


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` (:func:`medres.errors.did_you_mean`), or None."""
    return next(iter(did_you_mean(word, choices)), None)


# ---------------------------------------------------------------------------------------------------
# pydantic errors -> ConfigError


def _describe(err: dict, notes: dict[str, str]) -> tuple[str, str, str]:
    """(dotted field, reason, hint) for one pydantic error."""
    field, annotation, holder = _walk(err["loc"])
    kind, value = err["type"], err.get("input")
    raised = (err.get("ctx") or {}).get("error")
    if isinstance(raised, ConfigError):  # a cross-field check (``check_tasks``) names its own field
        return raised.field or field, raised.reason, raised.hint
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = _tags(annotation)
        tag = (err.get("ctx") or {}).get("tag")
        close = suggest(str(tag), tags) if tag is not None else None
        reason = (f"unknown type {tag!r}" + (f" — did you mean {close!r}?" if close else "")
                  if tag is not None else "'type' is missing")
        return f"{field}.type", reason, f"expected one of {', '.join(tags)}"
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        valid = list(holder.model_fields) if holder is not None else []
        close = suggest(key, valid)
        reason = f"unknown key {key!r}" + (f" — did you mean {close!r}?" if close else "")
        parent = field.rpartition(".")[0] or "the top level"
        return field, reason, f"valid keys in {parent}: {', '.join(valid)}"
    if kind == "missing":
        return field, "required setting is missing", f"add {field.rpartition('.')[2]}: ... here"
    reason = f"{err['msg']}; got {value!r}"
    hint = f"expected {_type_name(annotation)}"
    if kind == "value_error":  # a medres validator's own sentence says what is wrong and what is expected
        reason, hint = f"{str(err['msg']).removeprefix('Value error, ')}; got {value!r}", ""
    if kind == "literal_error" and isinstance(value, str):
        options = [a for a in _literals(annotation) if isinstance(a, str)]
        close = suggest(value, options)
        if close:
            reason += f" — did you mean {close!r}?"
    if field in notes:
        reason = (f"{notes[field]!r} is read by YAML 1.1 as the boolean {value!r}, not as text; "
                  f"{err['msg']}")
        hint = f"quote it: '{notes[field]}'"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "string_type":
        hint = f"quote it for text: '{value}'"
    return field, reason, hint


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in _literals(a)]


def translate_validation_error(exc: ValidationError, notes: dict[str, str],
                               source: str | None) -> ConfigError:
    described = [_describe(e, notes) for e in exc.errors()]
    # a union reports each member's failure; keep the most specific (deepest) ones
    fields = [f for f, _, _ in described]
    described = [d for d in described if not any(g.startswith(d[0] + ".") for g in fields)]
    by_field: dict[str, tuple[str, str, str]] = {}
    for d in described:  # one line per field: prefer the one with a suggestion
        if d[0] not in by_field or ("did you mean" in d[1] and "did you mean" not in by_field[d[0]][1]):
            by_field[d[0]] = d
    described = list(by_field.values())
    if len(described) == 1:
        field, reason, hint = described[0]
        return ConfigError(reason, field=field or None, hint=hint, path=source)
    lines = "\n".join(f"  - {f}: {r} ({h})" for f, r, h in described)
    return ConfigError(f"{len(described)} problems:\n{lines}", field=described[0][0] or None,
                       hint="fix every listed setting", path=source)
