"""The docker-compose story, one role per container: operator setup, brand, platform, auditor.

Each role is what that party would run on its own machine; they share only a volume for the development CA and
the tokens the operator hands out (in real life: out of band) and, for the operator, the server's data directory.
Both members generate the same synthetic world (same seed) and each uploads only its own side.

Usage: python -m cleanroom.devtools.compose ROLE --shared DIR [--target server:50051] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cleanroom_client import CleanRoomClient, CleanRoomError

from .synthetic import DEMO_POLICY, FLOW_END, FLOW_START, LIFT_CAMPAIGN, SyntheticConfig, generate, match_arguments

COLLAB = "compose-demo"
#: The synthetic world; CLEANROOM_COMPOSE_SCALE shrinks it (the test runs every role at a tenth).
_SCALE = float(os.environ.get("CLEANROOM_COMPOSE_SCALE", "1"))
WORLD = SyntheticConfig(
    brand_users=int(20_000 * _SCALE), platform_users=int(40_000 * _SCALE), shared=int(6_000 * _SCALE), seed=42
)


def _brand_done(shared: Path) -> bool:
    """Whether the brand finished its questions; stops the waiting roles if it failed instead."""
    if (shared / "brand.failed").exists():
        raise SystemExit("the brand failed; see its output")
    return (shared / "brand.done").exists()


def _wait(what: str, ready: Callable[[], bool], timeout: float = 600.0) -> None:
    """Poll `ready` every 50 ms at first, backing off to once a second: a role goes on soon after what it waits for."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except CleanRoomError:
            pass
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)
    raise SystemExit(f"gave up waiting for {what}")


def _client(shared: Path, target: str, name: str) -> CleanRoomClient:
    return CleanRoomClient(
        target,
        token=(shared / "tokens" / name).read_text().strip(),
        root_certificates=shared / "certs" / "ca.pem",
        state_dir=shared / "state" / name,
        progress=False,
    )


def setup(shared: Path, data: Path) -> None:
    """The operator: a development CA valid for the host `server`, and tokens for the three parties."""
    cli = [sys.executable, "-m", "cleanroom.cli", "admin"]
    if not (shared / "certs" / "server.pem").exists():
        subprocess.run([*cli, "make-dev-certs", str(shared / "certs"), "--host", "server"], check=True)
    (shared / "tokens").mkdir(parents=True, exist_ok=True)
    for name, role in (("brand", "member"), ("platform", "member"), ("auditor", "auditor")):
        path = shared / "tokens" / name
        if path.exists():
            continue
        token = subprocess.run(
            [*cli, "add-principal", name, "--role", role, "--data-dir", str(data)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        path.write_text(token)


def brand(shared: Path, target: str) -> None:
    """The brand: propose and approve the policy, match its CRM, ask every question, mark itself done."""
    world = generate(WORLD)
    with _client(shared, target, "brand") as room:
        _wait("the server", lambda: isinstance(room.list_collaborations(), list))
        if COLLAB not in {c.id for c in room.list_collaborations()}:
            room.create_collaboration(DEMO_POLICY, COLLAB)
        room.approve_policy(COLLAB)
        _wait("the platform's approval", lambda: room.get_collaboration(COLLAB).active)
        summary = room.match(COLLAB, **match_arguments(world)["brand"])
        print(f"brand: matched; the platform has {summary.peer_set_size:,} users")
        print(room.funnel(COLLAB, by="brand.tier", epsilon=0.5).to_string())
        print(room.funnel_flow(COLLAB, FLOW_START, FLOW_END, epsilon=0.5).to_string())
        print(room.segment_insight(COLLAB, "platform.age_band", epsilon=0.5).to_string())
        print(room.attribution(COLLAB, model="time_decay", lookback_days=7, epsilon=1.0).to_string())
        print(room.lift(COLLAB, LIFT_CAMPAIGN, epsilon=1.0).to_string())
        size = max(200, WORLD.platform_users // 20)
        print(room.lookalike(COLLAB, seed={"brand.tier": "gold"}, audience_size=size, epsilon=1.0).to_string())
        print(room.budget(COLLAB).to_string())
    (shared / "brand.done").write_text("done")


def platform(shared: Path, target: str) -> None:
    """The platform: approve, match its users and events, then receive the audiences."""
    world = generate(WORLD)
    with _client(shared, target, "platform") as room:
        _wait("the collaboration", lambda: COLLAB in {c.id for c in room.list_collaborations()})
        room.approve_policy(COLLAB)
        _wait("the brand's approval", lambda: room.get_collaboration(COLLAB).active)
        room.match(COLLAB, **match_arguments(world)["platform"])
        _wait("the brand's questions", lambda: _brand_done(shared), timeout=1800)
        for name, kind in room.audiences(COLLAB)[["name", "kind"]].itertuples(index=False):
            keys = room.fetch_audience(str(name))
            print(f"platform: received {kind} audience of {len(keys):,} of its own users")


def auditor(shared: Path, target: str, data: Path) -> None:
    """The operator assigns the auditor; the auditor verifies the log on the server and offline."""
    _wait("the brand's questions", lambda: _brand_done(shared), timeout=1800)
    subprocess.run(
        [sys.executable, "-m", "cleanroom.cli", "admin", "assign-auditor", "auditor", COLLAB, "--data-dir", str(data)],
        check=True,
    )
    with _client(shared, target, "auditor") as room:
        print(room.verify_audit_log(COLLAB))
        export = room.export_audit_log(shared / "audit.jsonl", COLLAB)
        (shared / "server-audit.pem").write_text(room.server_public_key())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cleanroom.cli",
            "audit",
            "verify",
            str(export),
            "--public-key",
            str(shared / "server-audit.pem"),
        ],
        check=True,
    )


def main() -> int:
    """Run one role."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["setup", "brand", "platform", "auditor"])
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--target", default="server:50051")
    parser.add_argument("--data", type=Path, default=Path("/data"))
    args = parser.parse_args()
    if args.role == "setup":
        setup(args.shared, args.data)
    elif args.role == "brand":
        try:
            brand(args.shared, args.target)
        except BaseException:
            (args.shared / "brand.failed").write_text("failed")
            raise
    elif args.role == "platform":
        platform(args.shared, args.target)
    else:
        auditor(args.shared, args.target, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
