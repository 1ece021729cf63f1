"""Reading a spec file into plain data, defensively, and typed access to that data.

Owns: ``read(path)``, which refuses anything but a regular UTF-8 file of at most
MAX_SPEC_BYTES before parsing it (a FIFO or a device would block or never end), and the
YAML dialect a spec is read in: PyYAML's safe loader, plus

- YAML 1.2 floats: ``1e-3``, ``1E3``, ``+1e-3`` and ``.5e-2`` are numbers, as every other
  YAML and JSON reader takes them (YAML 1.1 wanted a dot and a signed exponent). A quoted
  ``"1e-3"`` stays a string, as it does in every YAML version;
- duplicate keys refused, naming both lines (YAML says keys are unique; PyYAML silently
  keeps the last one);
- aliases (``*name``) refused. A few hundred bytes of nested aliases expand to millions of
  nodes once the spec is copied or written out (``spec.yaml``, the ConfigMap), and a spec
  has nothing big enough to share. Refusing every alias is simpler to explain and to trust
  than a node budget, and costs a user at most some repetition;
- nesting bounded to MAX_NESTING levels, so a hostile file is one clear line, never a
  RecursionError.

``Reader`` gives typed access to the parsed mapping and builds a dataclass from it, reading
each field's type, default and range from the dataclass it is handed; every failure names
the key's full path and shows the received value as a short excerpt.
Never touches: the spec's keys, defaults, ranges and cross-field rules (``job.spec``),
TensorFlow, Pillow, kubernetes.

Example:
    >>> read(Path("examples/shapes.yaml"))["train"]["learning_rate"]   # doctest: +SKIP
    0.001
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from job.errors import SpecError
from job.names import excerpt
from job.overrides import did_you_mean

MAX_SPEC_BYTES = 1024 * 1024
"""1 MiB: a complete spec is about 2 KB; anything this big is the wrong file or an attack."""
MAX_NESTING = 32
"""Levels of nested nodes; the deepest real value (cluster.tolerations[i].key) is at 5."""

_T = TypeVar("_T")

_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+\Z")
"""YAML 1.2 core schema floats with an exponent; the forms without one PyYAML already reads."""


class _Refused(Exception):
    """A spec the loader refuses although PyYAML would read it; the message names the line."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats, unique keys, no aliases and bounded nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {_line(event.start_mark)}: alias *{event.anchor} is not "
                           "allowed in a spec (aliases can expand a few bytes into gigabytes); "
                           "write the value out in full")
        if self._depth >= MAX_NESTING:
            raise _Refused(f"line {_line(self.peek_event().start_mark)}: values nest more than "
                           f"{MAX_NESTING} levels deep; a spec needs at most 5, see "
                           "examples/shapes.yaml")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as error:  # e.g. a 5000-digit integer, or month 13 in a date
            raise _Refused(f"line {_line(node.start_mark)}: cannot read the value "
                           f"{excerpt(node.value) if isinstance(node.value, str) else ''}"
                           f" ({str(error).splitlines()[0][:80]}); write a plain number or "
                           "quote it as a string") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise _Refused(f"duplicate key {excerpt(key)} at line {_line(key_node.start_mark)}"
                               f" (first at line {first_line[key]}); keep one of them")
            first_line[key] = _line(key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                                  list("-+0123456789."))


def read(path: Path) -> Any:
    """Read and parse the spec file at ``path``: plain dicts, lists and scalars.

    Raises:
        SpecError: naming the file (and the line where there is one), what was wrong, how
            to fix it.
    """
    return parse(_read_text(path), source=str(path))


def parse(text: str, *, source: str) -> Any:
    """Parse spec text with the spec's YAML dialect (see the module docstring)."""
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as error:
        raise SpecError(f"{source}: {error}.") from None
    except RecursionError:
        raise SpecError(f"{source}: values nest too deeply; a spec needs at most 5 levels, "
                        "see examples/shapes.yaml.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {_line(mark)}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(f"{source}: invalid YAML{where}: {problem[:120]}.") from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The file's text, after checking it is a regular file no bigger than MAX_SPEC_BYTES."""
    try:
        _check_regular(path, os.stat(path))
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening cannot hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as file:
            _check_regular(path, os.fstat(file.fileno()))
            raw = file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found; pass the path to a YAML spec.") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read the spec file ({error.strerror or error}); "
                        "pass the path to a readable YAML spec file.") from None
    if len(raw) > MAX_SPEC_BYTES:
        _too_big(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: the spec is not UTF-8 text (byte {error.start} is "
                        f"{raw[error.start]:#04x}); save it as UTF-8.") from None


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else
                "a FIFO" if stat.S_ISFIFO(info.st_mode) else
                "a socket" if stat.S_ISSOCK(info.st_mode) else "a device")
        raise SpecError(f"{path}: not a regular file ({kind}); pass the path to a YAML spec "
                        "file.")
    if info.st_size > MAX_SPEC_BYTES:
        _too_big(path)


def _too_big(path: Path) -> None:
    raise SpecError(f"{path}: the file is larger than 1 MiB ({MAX_SPEC_BYTES} bytes); a spec "
                    "is a few kilobytes, so this is likely the wrong file.")


def _line(mark: Any) -> int:
    return mark.line + 1


class Reader:
    """Typed access to a parsed YAML mapping that fails with the key's full path.

    ``build`` makes a spec dataclass from a mapping, field by field: the field's type picks
    the check (a ``Literal`` lists the choices), the field gives the default, and its
    metadata the range (``low``, ``high``, ``exclusive_low``).
    """

    def __init__(self, *, source: str, base_dir: Path, known: tuple[str, ...] = ()) -> None:
        self.source = source
        self.base_dir = base_dir
        self.known = known
        """Every dotted key of the schema, for "did you mean" on an unknown key."""

    def fail(self, key: str, received: Any, expected: str, fix: str) -> None:
        raise SpecError(f"{self.source}: {key}={excerpt(received)} is invalid: expected "
                        f"{expected}; {fix}.")

    def mapping(self, value: Any, key: str, *, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            where = key or "the top level"
            raise SpecError(f"{self.source}: {where} must be a mapping of keys, got "
                            f"{type(value).__name__}; see examples/shapes.yaml.")
        for k in value:
            if k not in allowed:
                full = f"{key}.{k}" if key else str(k)
                here = [f"{key}.{a}" if key else a for a in allowed]
                hint = did_you_mean(full, here) or did_you_mean(full, self.known)
                raise SpecError(f"{self.source}: unknown key {excerpt(full)}{hint or ';'} allowed "
                                f"keys{' under ' + key if key else ''}: {', '.join(allowed)}.")
        return value

    def allowed(self, d: Any, key: str, cls: type) -> dict:
        """``d`` itself, once it is a mapping whose keys are all fields of ``cls``."""
        return self.mapping(d, key, allowed=tuple(f.name for f in dataclasses.fields(cls)))

    def section(self, d: dict, name: str, *, required: bool = False,
                path: str | None = None) -> dict:
        path = path or name
        if name not in d or d[name] is None:
            if required:
                raise SpecError(f"{self.source}: missing required section {path!r}; "
                                "see examples/shapes.yaml.")
            return {}
        if not isinstance(d[name], dict):
            raise SpecError(f"{self.source}: {path} must be a mapping, got "
                            f"{type(d[name]).__name__} {excerpt(d[name])}.")
        return d[name]

    def build(self, cls: type[_T], d: dict, at: str, *, given: Mapping[str, Any] | None = None,
              readers: Mapping[str, FieldReader] | None = None) -> _T:
        """The dataclass ``cls`` from the mapping ``d`` found at ``at``, in field order.

        Args:
            given: values of fields the caller has already read and checked.
            readers: for fields whose type ``read`` does not know, ``reader(self, d, key)``,
                called in the field's turn.
        """
        self.allowed(d, at, cls)
        given, readers = given or {}, readers or {}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in given:
                values[f.name] = given[f.name]
            elif f.name in readers:
                values[f.name] = readers[f.name](self, d, f"{at}.{f.name}")
            else:
                values[f.name] = self.read(cls, f.name, d, at)
        return cls(**values)

    def read(self, cls: type, name: str, d: dict, at: str) -> Any:
        """The field ``name`` of the dataclass ``cls`` from ``d``, by its type, default and
        range. A missing or null key gives the default; on a field that may be None, an
        explicit null gives None."""
        f, (kinds, optional) = _fields(cls)[name], _kinds(_hints(cls)[name])
        if optional and name in d and d[name] is None:
            return None
        key = f"{at}.{name}"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        kind = kinds[0] if len(kinds) == 1 else None
        if kinds[0] is bool and len(kinds) == 2 and get_origin(kinds[1]) is Literal:
            return self.boolean_or(d, key, default, words=get_args(kinds[1]))
        if dataclasses.is_dataclass(kind):
            return self.build(kind, self.section(d, name, path=key), key)
        if get_origin(kind) is Literal:
            return self.choice(d, key, get_args(kind), default)
        if get_origin(kind) is tuple and get_origin(get_args(kind)[0]) is Literal:
            return self.choices(d, key, get_args(get_args(kind)[0]), default, f.metadata)
        if kind is int:
            return self.integer(d, key, default, f.metadata)
        if kind is float:
            return self.number(d, key, default, f.metadata)
        if kind is bool:
            return self.boolean(d, key, default)
        if kind is str:
            return self.string(d, key, required=required, default=default)
        if kind is Path:
            return self.path(d, key, required=required, default=default)
        raise TypeError(f"{cls.__name__}.{name}: no reader for {kinds}; pass one in readers=")

    def _get(self, d: dict, key: str, default: Any, required: bool) -> Any:
        short = key.rsplit(".", 1)[-1]
        if d.get(short) is None:
            if required:
                raise SpecError(f"{self.source}: missing required key {key!r}; "
                                "see examples/shapes.yaml.")
            return default
        return d[short]

    def string(self, d: dict, key: str, *, required: bool = False,
               default: str | None = None) -> str | None:
        value = self._get(d, key, default, required)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(key, value, "a non-empty string", "quote it in the YAML")
        return value

    def path(self, d: dict, key: str, *, required: bool = False,
             default: Path | None = None) -> Path | None:
        """A path resolved against base_dir; a default path is joined to it as it is."""
        value = self.string(d, key, required=required)
        if value is None:
            return None if default is None else self.base_dir / default
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.base_dir / p))

    def integer(self, d: dict, key: str, default: int | None,
                limits: Mapping[str, Any]) -> int | None:
        """An integer within ``limits["low"]`` and ``limits["high"]`` (either may be absent)."""
        value = self._get(d, key, default, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, value, "an integer", "write it without quotes or decimals")
        low, high = limits.get("low"), limits.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low}" + (f" to {high}" if high is not None else " up")
            self.fail(key, value, f"an integer {bounds}", "change the value")
        return value

    def number(self, d: dict, key: str, default: float, limits: Mapping[str, Any]) -> float:
        """A finite int or float from ``limits["low"]`` (or above it, with ``exclusive_low``)
        to ``limits["high"]``: .nan passes every comparison, so it is refused by name."""
        value = self._get(d, key, default, False)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, value, "a number", "write it without quotes, e.g. 0.2 or 1e-3")
        low, high = limits["low"], limits["high"]
        exclusive_low = limits.get("exclusive_low", False)
        finite = not isinstance(value, float) or math.isfinite(value)
        too_low = value <= low if exclusive_low else value < low
        if not finite or too_low or value > high:
            self.fail(key, value, f"a finite number {'above' if exclusive_low else 'from'} "
                      f"{low} to {high}", "change the value (.nan and .inf are not allowed)")
        return float(value)

    def boolean(self, d: dict, key: str, default: bool) -> bool:
        value = self._get(d, key, default, False)
        if not isinstance(value, bool):
            self.fail(key, value, "true or false", "write true or false without quotes")
        return value

    def boolean_or(self, d: dict, key: str, default: bool | str, *,
                   words: tuple[str, ...]) -> bool | str:
        """true, false, or one of ``words`` (e.g. auto)."""
        value = self._get(d, key, default, False)
        if not isinstance(value, bool) and value not in words:
            self.fail(key, value, f"{', '.join(words)}, true or false",
                      "write one of those without quotes")
        return value

    def choice(self, d: dict, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._get(d, key, default, False)
        if value not in choices:
            self.fail(key, value, "one of " + ", ".join(choices), "pick one of those")
        return value


    def choices(self, d: dict, key: str, choices: tuple[str, ...], default: tuple[str, ...],
                limits: Mapping[str, Any]) -> tuple[str, ...]:
        """A list of distinct values of ``choices`` that holds every one of
        ``limits["includes"]`` (``limits["why"]`` says why)."""
        value = self._get(d, key, default, False)
        needed = limits.get("includes", ())
        if (not isinstance(value, (list, tuple)) or not value
                or any(not isinstance(v, str) or v not in choices for v in value)
                or len(set(value)) != len(value) or any(v not in value for v in needed)):
            with_ = f", with {', '.join(needed)} ({limits['why']})" if needed else ""
            self.fail(key, value, f"a list of distinct values of {', '.join(choices)}{with_}",
                      f"e.g. {list(default)}")
        return tuple(value)


FieldReader = Callable[[Reader, dict, str], Any]
"""Reads one field that ``Reader.read`` has no rule for: ``reader(r, d, key)``."""


def _kinds(hint: Any) -> tuple[tuple[Any, ...], bool]:
    """The types an annotation allows besides None, and whether it allows None."""
    if get_origin(hint) not in (Union, UnionType):
        return (hint,), False
    args = get_args(hint)
    return tuple(a for a in args if a is not type(None)), type(None) in args


@functools.cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The fields' types, resolved: the spec's annotations are strings (``__future__``)."""
    return get_type_hints(cls)
