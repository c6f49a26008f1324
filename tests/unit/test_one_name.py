"""One name for one thing: the collaboration's id is `collaboration_id`, the object `collaboration` (code only; the
storage schema's column is `collab`, and SQL text is not code)."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RETIRED = {"collab", "collab_id", "collabs", "_collabs", "Collab"}


def test_the_collaboration_goes_by_one_name_in_code():
    found = []
    for folder in ("cleanroom", "clients/python/cleanroom_client"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
                if tok.type == tokenize.NAME and tok.string in RETIRED:
                    found.append(f"{path.relative_to(ROOT)}:{tok.start[0]} {tok.string}")
    assert found == []
