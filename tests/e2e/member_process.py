"""One member of the end-to-end test, run as its own process: generate its side of the data and match.

Connection settings come from CLEANROOM_TARGET, CLEANROOM_TOKEN and CLEANROOM_CA, as a member would set them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cleanroom.devtools.synthetic import SyntheticConfig, generate
from cleanroom_client import CleanRoomClient


def main() -> None:
    member, collab, state_dir, out, n, shared, chunk_rows = sys.argv[1:8]
    data = generate(SyntheticConfig(brand_users=int(n), platform_users=int(n), shared=int(shared), seed=11))
    with CleanRoomClient(state_dir=state_dir, progress=False, chunk_rows=int(chunk_rows)) as client:
        if member == "brand":
            summary = client.match(
                collab,
                users=data.brand_users,
                key="customer_id",
                identifiers={"email": "email", "phone": "mobile"},
                attributes=["tier"],
                events={"conversions": data.brand_conversions},
                wait_timeout=900,
            )
        else:
            summary = client.match(
                collab,
                users=data.platform_users,
                key="user_id",
                identifiers={"email": "email", "phone": "phone"},
                attributes=["age_band", "stage_4a"],
                wait_timeout=900,
            )
    Path(out).write_text(json.dumps(summary.to_dict()))


if __name__ == "__main__":
    main()
