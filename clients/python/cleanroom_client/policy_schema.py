"""The policy's JSON Schema (`policy.schema.json`, the one statement of its structure) and its problems in words.

A problem names where it is (`tables.brand.users.key: ...`) and what is expected there, from the schema's own
`x-problem` texts, so the messages and the rules they describe live in one file. jsonschema loads when a policy is
first checked, not at import: most commands (ping, show, approve, budget) never check one on this machine.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import jsonschema

SCHEMA: Final[dict[str, Any]] = json.loads((files(__package__) / "policy.schema.json").read_text())
DEFS: Final = SCHEMA["$defs"]


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The schema's validator, built when a policy is first checked (loading jsonschema costs a command 0.1 s)."""
    import jsonschema

    return jsonschema.Draft202012Validator(SCHEMA)


def schema_problems(doc: Any) -> list[str]:
    """Where `doc` breaks the schema: one line per problem, `path: what is expected` (the schema's x-problem)."""
    problems = []
    for error in sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        path = [str(p) for p in error.absolute_path if not isinstance(p, int)]
        schema = error.schema if isinstance(error.schema, dict) else {}
        if error.validator == "additionalProperties" and schema.get("additionalProperties") is False:
            known = ", ".join(sorted(schema.get("properties", {})))
            extra = sorted(set(error.instance) - set(schema.get("properties", {})), key=str)
            problems += [_at([*path, str(key)], f"unknown key (known: {known})") for key in extra]
            continue
        if error.validator == "required":
            missing = sorted(set(error.validator_value) - set(error.instance))
            properties = schema.get("properties", {})
            for key in missing:
                problems.append(_at([*path, key], properties.get(key, {}).get("x-problem", "required")))
            continue
        if "propertyNames" in error.relative_schema_path:
            path.append(str(error.instance))
        hint = _problem_of(error)
        problems.append(_at(path, hint.format(value=repr(error.instance)) if hint else error.message))
    return problems


def _problem_of(error: jsonschema.ValidationError) -> str | None:
    """The x-problem of the failing schema node, or of the nearest node above it that has one."""
    if isinstance(error.schema, dict) and isinstance(error.schema.get("x-problem"), str):
        return str(error.schema["x-problem"])
    node: Any = SCHEMA
    found = node.get("x-problem")
    for step in list(error.absolute_schema_path)[:-1]:
        if isinstance(node, dict) and step not in node and "$ref" in node:  # the path runs through a $ref
            node = DEFS[node["$ref"].rsplit("/", 1)[1]]
        node = node[step]
        if isinstance(node, dict) and "x-problem" in node:
            found = node["x-problem"]
    return found if isinstance(found, str) else None


def _at(path: list[str], what: str) -> str:
    return f"{'.'.join(path)}: {what}" if path else what
