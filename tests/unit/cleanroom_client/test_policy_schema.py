"""The policy schema is the contract: every policy in the repository agrees with it, and the validator uses it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from cleanroom_client.identity import IdentifierType
from cleanroom_client.policy import IDENTIFIER_TYPES, SCHEMA, PolicyError, parse_policy, schema_problems

ROOT = Path(__file__).resolve().parents[3]
SOURCES = ("cleanroom", "clients", "tests", "scripts", "benchmarks", "protos", "docs", "README.md")
_YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _texts(path: Path) -> list[str]:
    """String constants of a Python file, or YAML blocks of a Markdown file."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return _YAML_BLOCK.findall(source)
    return [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def repository_policies() -> list[tuple[str, dict[str, object]]]:
    """Every policy written in the repository's code, tests and docs: (where, parsed YAML)."""
    found: list[tuple[str, dict[str, object]]] = []
    for top in SOURCES:
        base = ROOT / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.suffix in (".py", ".md"))
        for path in paths:
            if any(part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(ROOT).parts):
                continue
            for text in _texts(path):
                if "members:" not in text or "epsilon" not in text:
                    continue
                try:
                    doc = yaml.safe_load(text)
                except yaml.YAMLError:
                    continue
                if isinstance(doc, dict) and "members" in doc:
                    found.append((str(path.relative_to(ROOT)), doc))
    found += [("protos/policy.schema.json examples", e) for e in SCHEMA["examples"]]
    return found


POLICIES = repository_policies()


def test_the_schema_is_valid_json_schema_and_names_the_protocols_identifier_types():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert tuple(t.value for t in IdentifierType) == IDENTIFIER_TYPES


def test_the_repository_has_policies_to_check():
    places = {where for where, _ in POLICIES}
    for expected in ("cleanroom/devtools/synthetic.py", "cleanroom/conformance.py", "protos/POLICY.md"):
        assert expected in places
    assert len(POLICIES) >= 7


@pytest.mark.parametrize(("where", "doc"), POLICIES, ids=[w for w, _ in POLICIES])
def test_every_policy_in_the_repository_agrees_with_the_schema(where, doc):
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))
    try:
        parse_policy(yaml.safe_dump(doc))
        accepted = True
    except PolicyError:
        accepted = False
    if accepted:
        assert not errors, f"{where}: the validator accepts a policy the schema refuses: {errors[0].message}"
    if not where.startswith("tests/"):  # outside the tests every policy is meant to be valid
        assert accepted, f"{where}: {schema_problems(doc)}"
        assert not errors


def test_structural_problems_come_from_the_schema_with_their_paths():
    problems = schema_problems({"name": "x", "members": {"brand": {"abilities": ["fly"]}}, "colour": 1})
    assert "members: required, a mapping of two to eight members (a brand and its platforms)" in problems
    assert any(p.startswith("members.brand.abilities: unknown ability 'fly'") for p in problems)
    assert any(p.startswith("colour: unknown key") for p in problems)
    assert "min_group_size: required, an integer >= 1" in problems
