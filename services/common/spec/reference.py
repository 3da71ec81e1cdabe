"""Generate ``docs/spec-reference.md`` from the spec's JSON Schema (``python -m services.common.spec.reference``).

The committed file is checked by a test, so the reference cannot drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.common.spec.experiment import json_schema

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "spec-reference.md"


def _type(prop: dict) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "oneOf" in prop:
        return " or ".join(_type(p) for p in prop["oneOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "(" + ", ".join(_type(p) for p in prop["prefixItems"]) + ")"
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and "additionalProperties" in prop:
        return f"map of {_type(prop['additionalProperties'])}"
    return str(kind)


def _bounds(prop: dict) -> str:
    parts = []
    for key, sym in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{sym} {prop[key]}")
    if "minItems" in prop:
        parts.append(f"≥ {prop['minItems']} items")
    if "pattern" in prop:
        parts.append(f"pattern `{prop['pattern']}`")
    return ", ".join(parts)


def _default(prop: dict, required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return "built-in (see the type)"
    text = json.dumps(prop["default"])
    return f"`{text}`" if len(text) <= 60 else "(see schema)"


def render_reference() -> str:
    schema = json_schema()
    sections = [("ExperimentSpec", schema)] + sorted(schema["$defs"].items())
    lines = [
        "# Experiment spec reference",
        "",
        "Generated from the pydantic models by `python -m services.common.spec.reference`; "
        "`flatland schema` prints the same as JSON Schema for editors. Unknown fields are errors.",
        "",
    ]
    for name, model in sections:
        lines += [f"## {name}", "", (model.get("description") or "").strip(), ""]
        props = model.get("properties", {})
        if not props:
            continue
        lines += ["| field | type | default | bounds | description |", "| --- | --- | --- | --- | --- |"]
        required = set(model.get("required", []))
        for field, prop in props.items():
            desc = (prop.get("description") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{field}` | {_type(prop)} | {_default(prop, field in required)} | {_bounds(prop)} | {desc} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(render_reference())
    print(REFERENCE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
