"""Every test file the docs name exists: a moved or renamed test must not leave a promise without its proof."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAMED = re.compile(r"`((?:tests/)?(?:unit|system|e2e|privacy|reference|product|benchmarks)/[\w/]+\.py)")


def test_every_test_file_named_in_the_docs_exists():
    missing = []
    for doc in DOCS:
        for path in NAMED.findall(doc.read_text(encoding="utf-8")):
            candidates = [ROOT / path] if path.startswith("tests/") else [ROOT / "tests" / path, ROOT / path]
            if not any(c.exists() for c in candidates):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert missing == []
