"""Turning untrusted spec text into plain data, with bounds on what that may cost.

Every spec arrives as text from someone else (a file, a gRPC request), so parsing must
not amplify it: a 485-byte YAML alias bomb expands to billions of nodes, and 10,000
nested brackets exhaust the recursion limit. :func:`parse_document` refuses both with
a :class:`SpecError` naming the limit before anything walks the expanded document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import SpecError

#: Largest spec text accepted (bytes of UTF-8). The full study's spec is about 10 KB;
#: 20,000 datasets fit in about 1.5 MB.
MAX_SPEC_BYTES = 8 * 1024 * 1024
#: Deepest nesting of mappings and lists (the spec models nest fewer than 10 levels).
MAX_DEPTH = 64
#: Most values in the document once YAML aliases are expanded (a value used through
#: N aliases counts N times): the bound on what validation and error messages may walk.
MAX_NODES = 2_000_000


# libyaml's safe loader: the same constructors as yaml.SafeLoader, four times faster, and its
# parser refuses nesting deeper than 1,000 levels instead of recursing.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def check_bounds(data: Any, source: str = "spec") -> None:
    """Raise :class:`SpecError` if ``data`` nests deeper than :data:`MAX_DEPTH`, holds more
    than :data:`MAX_NODES` values with aliases expanded, or contains itself (a YAML cycle).

    Iterative, and linear in the *distinct* containers: a value shared through aliases is
    sized once and its size reused, so a bomb is measured without being expanded.
    """
    sizes: dict[int, int] = {}  # id(container) -> expanded node count
    on_path: set[int] = set()
    # Stack of (container, depth, child iterator, running size).
    root_children = _children(data)
    if root_children is None:
        return
    stack = [(data, 1, iter(root_children), 1)]
    on_path.add(id(data))
    while stack:
        node, depth, children, total = stack[-1]
        child = next(children, _DONE)
        if child is _DONE:
            stack.pop()
            on_path.discard(id(node))
            sizes[id(node)] = total
            if stack:
                parent = stack[-1]
                stack[-1] = (parent[0], parent[1], parent[2], parent[3] + total)
                if stack[-1][3] > MAX_NODES:
                    _too_many(source)
            elif total > MAX_NODES:
                _too_many(source)
            continue
        grandchildren = _children(child)
        if grandchildren is None:
            stack[-1] = (node, depth, children, total + 1)
            continue
        if id(child) in on_path:
            raise SpecError(f"{source}: a value contains itself (a recursive YAML alias); write it out instead")
        if id(child) in sizes:  # shared through an alias: already measured
            total += sizes[id(child)]
            stack[-1] = (node, depth, children, total)
            if total > MAX_NODES:
                _too_many(source)
            continue
        if depth + 1 > MAX_DEPTH:
            raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep; a spec needs fewer than 10")
        on_path.add(id(child))
        stack.append((child, depth + 1, iter(grandchildren), 1))


_DONE = object()


def _children(value: Any):
    if isinstance(value, dict):
        return [v for kv in value.items() for v in kv]
    if isinstance(value, (list, tuple)):
        return value
    return None


def _too_many(source: str):
    raise SpecError(
        f"{source}: more than {MAX_NODES:,} values once YAML aliases are expanded "
        "(an alias bomb?); write the spec out without nested aliases"
    )


def parse_document(text: str, fmt: str = "yaml", source: str = "spec") -> Any:
    """Parse spec text as YAML (the default) or JSON into plain data, within the bounds above.

    Every failure is a one-line :class:`SpecError` naming ``source``.
    """
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; a spec is a few kilobytes")
    try:
        data = json.loads(text) if fmt == "json" else yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"{source}: not valid {fmt.upper()}: {_one_line(exc)}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep; a spec needs fewer than 10") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise SpecError(f"{source}: not a valid {fmt.upper()} value: {_one_line(exc)}") from None
    check_bounds(data, source)
    return data


def parse_json_field(text: str, field: str, default: Any = None) -> Any:
    """A request's JSON field (``params_json``, ``settings_json``, ...) as plain data, bounded
    like a spec; ``default`` when the field is blank. Errors name ``field``."""
    if not text.strip():
        return default
    return parse_document(text, "json", field)


def read_spec_text(path: str | Path) -> str:
    """The text of a spec file, or a one-line :class:`SpecError` (missing, a directory,
    too large, not UTF-8 text)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a directory, not a spec file")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; a spec is a few kilobytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SpecError(
            f"{path}: not UTF-8 text{hint}: byte {exc.start} is {raw[exc.start:exc.start + 1]!r}; save the spec as UTF-8"
        ) from None
    if "\x00" in text:
        raise SpecError(f"{path}: contains NUL bytes; a spec is UTF-8 text, not a binary file")
    return text
