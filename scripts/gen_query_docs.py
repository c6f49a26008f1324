"""Write docs/queries.md's table of query types from their declarations (`cleanroom_client.query_types`).

The table sits between the markers `<!-- queries:begin -->` and `<!-- queries:end -->`; the prose around it is
kept. `--check` fails when the committed page differs from what the declarations produce.

Usage: python scripts/gen_query_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleanroom_client.query_types import docs_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "queries.md"
BEGIN, END = "<!-- queries:begin -->", "<!-- queries:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/queries.md is stale")
    args = parser.parse_args()
    text = PAGE.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    fresh = f"{head}{BEGIN}\n{docs_table()}{END}{tail}"
    if args.check:
        if fresh != text:
            print(f"{PAGE} is stale: run python scripts/gen_query_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
