"""YAML reading for ``medres.config``: ``safe_load`` semantics with YAML 1.1's surprises caught.

PyYAML implements YAML 1.1, which reads ``lr: 1e-3`` as the *string* "1e-3", ``country: NO`` as
``False``, ``id: 012`` as the octal number 10, ``t: 1:30`` as 90, and keeps the last of two
duplicate keys silently. ``ConfigLoader`` (a ``yaml.SafeLoader``; no Python objects are ever built):

- reads ``1e-3`` / ``2E5`` as floats (YAML 1.2 rule),
- refuses duplicate keys,
- keeps the YAML 1.1-only booleans (yes/no/on/off in any case) as ``Yaml11Bool`` markers so the
  config can explain the problem when such a value lands in a text field,
- keeps octal-looking (``012``) and sexagesimal (``1:30``) integers as ``AmbiguousInt`` markers,
  which the config refuses with a hint,
- refuses a document whose aliases expand beyond ``MAX_EXPANDED_NODES`` values (an alias bomb),
  counted on the composed node graph before anything is constructed.

Hand-written because no maintained YAML library offers this on top of PyYAML's safe loader
(ruamel.yaml speaks YAML 1.2 but would be a new dependency for four rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from medres.errors import ConfigError

__all__ = ["ConfigLoader", "Yaml11Bool", "AmbiguousInt", "load_yaml", "load_yaml_value"]


@dataclass(frozen=True)
class Yaml11Bool:
    """A YAML 1.1-only boolean (``yes``, ``NO``, ``on``, ...) with its original text."""

    text: str

    @property
    def value(self) -> bool:
        return self.text.lower() in ("yes", "on")


@dataclass(frozen=True)
class AmbiguousInt:
    """An integer YAML 1.1 reads in another base: ``012`` (octal, = 10) or ``1:30`` (base 60, = 90)."""

    text: str
    value: int


#: The most nodes a document may hold once its aliases are expanded (a real config has a few hundred).
#: PyYAML shares an aliased node, but everything downstream (override merging, pydantic, saving the
#: resolved config) copies each expansion: nine levels of ten-wide aliases in 1 KB expand to 10**9.
MAX_EXPANDED_NODES = 20_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes in the tree ``node`` stands for with every alias expanded (memoised on shared nodes);
    stops counting past ``limit``. A node that contains itself counts as past the limit."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:  # still being counted: the node contains itself
            return limit + 1
        return memo[key]
    memo[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = total
    return total


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the checks listed in the module docstring."""

    def construct_document(self, node: yaml.Node) -> Any:
        """Refuse documents whose aliases expand beyond :data:`MAX_EXPANDED_NODES` before building them."""
        size = _expanded_size(node, {}, MAX_EXPANDED_NODES)
        if size > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"the YAML aliases (*name) expand to more than {MAX_EXPANDED_NODES} values (an alias "
                "bomb, or an alias that contains itself); refused before building it",
                hint="write the settings out instead of nesting aliases of aliases")
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (Yaml11Bool, AmbiguousInt)):
                key = key.text
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: let PyYAML report it
                continue
            if first is not None:
                raise ConfigError(
                    f"duplicate key {key!r} on line {line} (first on line {first}); YAML would keep "
                    "only the last one silently",
                    hint="remove or merge one of the two entries",
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool | Yaml11Bool:
        text = self.construct_scalar(node)
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return Yaml11Bool(text)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | AmbiguousInt:
        text = str(self.construct_scalar(node))
        value = super().construct_yaml_int(node)
        digits = text.lstrip("+-").replace("_", "")
        if ":" in digits or (len(digits) > 1 and digits.startswith("0") and digits[1:2] not in "xXbB"):
            return AmbiguousInt(text, value)
        return value


ConfigLoader.add_constructor("tag:yaml.org,2002:bool", ConfigLoader.construct_yaml_bool)
ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)
# YAML 1.2 floats without a dot (1e-3, 2E+5), which YAML 1.1 leaves as strings.
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(exc: yaml.YAMLError, path: str | None) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"not valid YAML{where}: {problem}", path=path,
                       hint="check indentation, colons and quotes around that line")


def load_yaml(text: str, *, path: str | None = None) -> Any:
    """Parse a configuration document; ConfigError (naming ``path`` and the line) when it is not YAML,
    and when it is empty or only comments: a config that sets nothing is a wrong file, not a wish for
    every default (omitting ``--config`` gives those)."""
    try:
        doc = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
        if doc is None:
            raise ConfigError("the config file is empty (or holds only comments), so it sets nothing",
                              hint="point --config at the intended file; to run with every default, "
                                   "leave --config out")
        return doc
    except ConfigError as e:
        raise ConfigError(e.reason, field=e.field, hint=e.hint, path=path) from None
    except RecursionError:
        raise ConfigError("is nested too deeply to be a configuration", path=path,
                          hint="a medres config is a few levels of sections; check the brackets") from None
    except yaml.YAMLError as e:
        raise _yaml_error(e, path) from None


def load_yaml_value(text: str, *, field: str) -> Any:
    """Parse one ``--set`` value (``5``, ``1e-3``, ``[1,2]``, ``balanced``) with the file's rules."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
    except ConfigError as e:
        raise ConfigError(e.reason, field=field, hint=e.hint) from None
    except RecursionError:
        raise ConfigError("--set value is nested too deeply", field=field) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set value {text!r} is not valid YAML: {getattr(e, 'problem', e)}",
                          field=field, hint="quote text, write lists as [1,2,3]") from None
