"""The member CLI over real gRPC with TLS: set up, match from CSV files, query, output formats, errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pandas as pd
from typer.testing import CliRunner

from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom_client.cli import app, hoist_output
from cleanroom_client.query_types import BY_NAME, QUERIES


def test_member_cli_end_to_end(server, tokens, pki, tmp_path, member_env):
    runner = CliRunner()
    brand, platform = (member_env(n) for n in ("brand", "platform"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 5").replace(
            "queries: [overlap,", "queries: [overlap, venn,"
        )
    )

    r = runner.invoke(app, ["create", str(policy), "--id", "cli-collab"], env=brand)
    assert r.exit_code == 0, r.output
    assert "now: approve cli-collab" in r.output
    for env in (brand, platform):
        etag = json.loads(runner.invoke(app, ["-o", "json", "show", "cli-collab"], env=env).output)["policy_etag"]
        r = runner.invoke(app, ["approve", "cli-collab", "--etag", etag], env=env)
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["-o", "json", "list"], env=brand)
    assert json.loads(r.output)["rows"][0]["state"] == "active"

    data = generate(SyntheticConfig(brand_users=400, platform_users=500, shared=300, seed=2))
    data.brand_users.to_csv(tmp_path / "crm.csv", index=False)
    # Times as a CSV holds them: text. The policy names the time column; the CLI parses it.
    data.brand_conversions.to_csv(tmp_path / "orders.csv", index=False)
    data.platform_users.to_csv(tmp_path / "users.csv", index=False)
    # The platform matches from its own process (CliRunner swaps sys.stdout, so it cannot run in two threads).
    platform_cmd = [
        sys.executable,
        "-m",
        "cleanroom_client.cli",
        "--no-progress",
        "match",
        "cli-collab",
        "--users",
        str(tmp_path / "users.csv"),
        "--key",
        "user_id",
        "--identifier",
        "email=email",
        "--identifier",
        "phone=phone",
        "--attribute",
        "age_band",
    ]
    other = subprocess.Popen(
        platform_cmd, env={**os.environ, **platform}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    results = {
        "brand": runner.invoke(
            app,
            [
                "--no-progress",
                "match",
                "cli-collab",
                "--users",
                str(tmp_path / "crm.csv"),
                "--key",
                "customer_id",
                "--identifier",
                "email=email",
                "--identifier",
                "phone=mobile",
                "--attribute",
                "tier",
                "--event",
                f"conversions={tmp_path / 'orders.csv'}",
            ],
            env=brand,
        )
    }
    output, _ = other.communicate(timeout=300)
    assert other.returncode == 0, output
    assert results["brand"].exit_code == 0, results["brand"].output
    assert "peer's set size 500" in results["brand"].output
    r = runner.invoke(app, ["-o", "json", "value", "cli-collab", "--measure", "brand.conversions.value"], env=brand)
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["-o", "json", "overlap", "cli-collab", "--by", "platform.age_band"], env=brand)
    assert r.exit_code == 0, r.output
    answer = json.loads(r.output)
    assert len(answer["rows"]) == 5
    assert answer["epsilon_spent"] == 0.5
    r = runner.invoke(app, ["-o", "csv", "budget", "cli-collab"], env=brand)
    assert r.output.splitlines()[0] == "member,total,spent,left,delta_total,delta_spent,delta_left"
    r = runner.invoke(app, ["overlap", "cli-collab", "--by", "platform.income"], env=brand)
    assert r.exit_code == 1
    assert "INVALID_ARGUMENT" in r.output
    assert "Traceback" not in r.output

    # Every declared query's command, as its help's example writes it, reaches the server through the SDK (previews:
    # nothing spent). Where this collaboration lacks the data a query needs, the server says so; never UNIMPLEMENTED.
    previewed = {}
    for q in QUERIES:
        words = shlex.split(q.example)[1:]
        words[1] = "cli-collab"
        r = runner.invoke(app, ["-o", "json", "--preview", *words], env=brand)
        assert r.exit_code in (0, 1), (q.command, r.output)
        assert "UNIMPLEMENTED" not in r.output, q.command
        assert "Traceback" not in r.output, q.command
        if r.exit_code == 0:
            answer = json.loads(r.output)
            previewed[q.name] = ({row["measure"] for row in answer["rows"]}, set(answer["typical"]))
    for name in ("overlap", "venn", "segment_insight", "value", "loyalty", "lookalike"):
        measures, vectors = previewed[name]
        assert set(BY_NAME[name].measures) <= measures, name  # every cell the answer would hold
        assert vectors == set(BY_NAME[name].vectors), name  # at the typical value of each vector


def test_member_cli_errors_say_what_to_do(server, tokens, pki, tmp_path, member_env):
    runner = CliRunner()
    env = member_env("brand")
    r = runner.invoke(app, ["list"], env={**env, "CLEANROOM_TOKEN": "crt_wrong"})
    assert r.exit_code == 1
    assert "UNAUTHENTICATED" in r.output
    r = runner.invoke(app, ["list"], env={**env, "CLEANROOM_TOKEN": ""})
    assert r.exit_code == 2
    assert "CLEANROOM_TOKEN" in r.output
    r = runner.invoke(app, ["create", str(tmp_path / "missing.yaml")], env=env)
    assert r.exit_code == 2
    r = runner.invoke(app, ["-o", "xml", "list"], env=env)
    assert r.exit_code != 0
    r = runner.invoke(app, ["match", "--help"], env=env)
    assert "Example" in r.output


def test_propose_show_approve_only_what_was_read(server, tokens, pki, tmp_path, member_env):
    """A platform reviewing a policy sees its lists (rich markup must not eat `[...]`) and approves by etag only."""
    runner = CliRunner()
    brand, platform = (member_env(n) for n in ("brand", "platform"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEMO_POLICY)
    assert runner.invoke(app, ["create", str(policy), "--id", "cli-review"], env=brand).exit_code == 0

    r = runner.invoke(app, ["show", "cli-review"], env=platform)
    assert r.exit_code == 0, r.output
    assert "abilities: [contribute, receive_audiences]" in r.output
    assert "identifiers: [email, phone]" in r.output
    first = json.loads(runner.invoke(app, ["-o", "json", "show", "cli-review"], env=platform).output)
    assert "abilities: [contribute, receive_audiences]" in first["policy_yaml"]
    assert f"--etag {first['policy_etag']}" in r.output

    r = runner.invoke(app, ["approve", "cli-review"], env=platform)
    assert r.exit_code == 2
    assert "cleanroom-client show cli-review" in r.output

    # The brand changes the policy after the platform read it: the old etag no longer approves anything.
    policy.write_text(DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 80"))
    r = runner.invoke(app, ["propose", "cli-review", str(policy)], env=brand)
    assert r.exit_code == 0, r.output
    assert "revision 2" in r.output
    r = runner.invoke(app, ["approve", "cli-review", "--etag", first["policy_etag"]], env=platform)
    assert r.exit_code == 1
    assert "changed since you read it" in r.output
    second = json.loads(runner.invoke(app, ["-o", "json", "show", "cli-review"], env=platform).output)
    assert second["policy_revision"] == 2
    assert "min_group_size: 80" in second["policy_yaml"]
    for env in (platform, brand):
        r = runner.invoke(app, ["approve", "cli-review", "--etag", second["policy_etag"]], env=env)
        assert r.exit_code == 0, r.output
    assert "is active" in r.output
    # `-o` may come after the command too (it used to say "No such option: -o").
    r = runner.invoke(app, hoist_output(["budget", "cli-review", "-o", "csv"]), env=brand)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].count(",") >= 1


def test_output_option_after_the_command_is_moved_before_it():
    assert hoist_output(["budget", "c", "-o", "csv"]) == ["-o", "csv", "budget", "c"]
    assert hoist_output(["--target", "h:1", "budget", "c", "--output=json"]) == [
        "--target",
        "h:1",
        "--output=json",
        "budget",
        "c",
    ]
    assert hoist_output(["-o", "json", "list"]) == ["-o", "json", "list"]
    assert hoist_output(["match", "c", "--users", "u.csv"]) == ["match", "c", "--users", "u.csv"]


def test_ping_says_who_you_are(server, tokens, pki, tmp_path, make_client, member_env):
    """Issue 32 item 5: the token's principal and role, as the server authenticated it, not only a count."""
    runner = CliRunner()
    r = runner.invoke(app, ["ping"], env=member_env("brand"))
    assert r.exit_code == 0, r.output
    assert f"connected to localhost:{server.port} as brand (member): 0 collaborations" in r.output
    r = runner.invoke(app, ["ping"], env={**member_env("brand"), "CLEANROOM_TOKEN": tokens["auditor"]})
    assert "as auditor (auditor)" in r.output
    assert make_client("platform").whoami() == ("platform", "member")


def test_policy_init_from_csv_files_then_create_show_approve(server, tokens, pki, tmp_path, member_env):
    """A member drafts its policy from its own CSVs, is warned that data-read bounds disclose, and starts with it."""
    runner = CliRunner()
    brand, platform = (member_env(n) for n in ("brand", "platform"))
    data = generate(SyntheticConfig(brand_users=600, platform_users=600, shared=300, seed=5))
    data.brand_users.to_csv(tmp_path / "crm.csv", index=False)
    data.brand_conversions.to_csv(tmp_path / "orders.csv", index=False)
    draft = tmp_path / "draft.yaml"
    r = runner.invoke(
        app,
        [
            "policy", "init", "--users", str(tmp_path / "crm.csv"), "--key", "customer_id",
            "--identifier", "email=email", "--identifier", "phone=mobile",
            "--event", f"conversions={tmp_path / 'orders.csv'}", "--to", str(draft),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "read from your data" in r.output  # the disclosure warning
    text = draft.read_text()
    assert "customer_id" not in text  # the local key and the identifier columns are never declared
    assert "mobile" not in text
    assert "tier: [basic, gold, silver]" in text
    assert "time: ts" in text
    r = runner.invoke(app, ["create", str(draft), "--id", "cli-drafted"], env=brand)
    assert r.exit_code == 0, r.output
    for env in (brand, platform):
        etag = json.loads(runner.invoke(app, ["-o", "json", "show", "cli-drafted"], env=env).output)["policy_etag"]
        assert runner.invoke(app, ["approve", "cli-drafted", "--etag", etag], env=env).exit_code == 0
    assert json.loads(runner.invoke(app, ["-o", "json", "show", "cli-drafted"], env=brand).output)["state"] == "active"


def test_each_member_drafts_its_side_and_policy_merge_gives_the_room(server, tokens, pki, tmp_path, member_env):
    """Issue 32 item 3: the platform's own run gives it the platform's abilities, test groups need no time column,
    the stages keep the funnel's order, and the merged drafts enable every query the files support."""
    runner = CliRunner()
    data = generate(SyntheticConfig(brand_users=400, platform_users=500, shared=200, seed=6))
    files = {
        "crm.csv": data.brand_users,
        "orders.csv": data.brand_conversions,
        "users.csv": data.platform_users,
        "stage_history.csv": data.platform_stage_history,
        "exposures.csv": data.platform_exposures,
        "test_groups.csv": data.platform_test_groups,
    }
    for name, frame in files.items():
        frame.to_csv(tmp_path / name, index=False)
    r = runner.invoke(
        app,
        [
            "policy", "init", "--member", "platform", "--users", str(tmp_path / "users.csv"), "--key", "user_id",
            "--identifier", "email=email", "--identifier", "phone=phone",
            "--event", f"stage_history={tmp_path / 'stage_history.csv'}",
            "--event", f"exposures={tmp_path / 'exposures.csv'}",
            "--event", f"test_groups={tmp_path / 'test_groups.csv'}", "--to", str(tmp_path / "platform.yaml"),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "platform drafted as the platform (contribute, receive_audiences)" in r.output
    r = runner.invoke(
        app,
        [
            "policy", "init", "--users", str(tmp_path / "crm.csv"), "--key", "customer_id",
            "--identifier", "email=email", "--identifier", "phone=mobile",
            "--event", f"conversions={tmp_path / 'orders.csv'}", "--to", str(tmp_path / "brand.yaml"),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    policy = tmp_path / "policy.yaml"
    r = runner.invoke(
        app, ["policy", "merge", str(tmp_path / "brand.yaml"), str(tmp_path / "platform.yaml"), "--to", str(policy)]
    )
    assert r.exit_code == 0, r.output
    text = policy.read_text()
    assert "brand:\n    abilities: [contribute, query, receive_results]" in text
    assert "platform:\n    abilities: [contribute, receive_audiences]" in text
    assert "stage_4a: [aware, appeal, act, advocate]" in text
    assert (
        "queries: [overlap, funnel, funnel_flow, segment_insight, value, loyalty, attribution, lift, lookalike, "
        "activation]"
    ) in text
    brand, platform = (member_env(n) for n in ("brand", "platform"))
    r = runner.invoke(app, ["create", str(policy), "--id", "cli-merged"], env=brand)
    assert r.exit_code == 0, r.output
    for env in (brand, platform):
        etag = json.loads(runner.invoke(app, ["-o", "json", "show", "cli-merged"], env=env).output)["policy_etag"]
        assert runner.invoke(app, ["approve", "cli-merged", "--etag", etag], env=env).exit_code == 0
    # Two drafts of one member, or a role that is none: one line that says what to do, nothing written.
    (tmp_path / "brand-again.yaml").write_text((tmp_path / "brand.yaml").read_text())
    r = runner.invoke(
        app, ["policy", "merge", str(tmp_path / "brand.yaml"), str(tmp_path / "brand-again.yaml"), "--to", str(policy)]
    )
    assert r.exit_code == 2
    assert "both declare brand's tables" in r.output
    r = runner.invoke(
        app,
        ["policy", "init", "--users", str(tmp_path / "crm.csv"), "--key", "customer_id", "--identifier",
         "email=email", "--role", "retailer", "--to", str(tmp_path / "x.yaml")],
    )  # fmt: skip
    assert r.exit_code == 2
    assert "--role: 'retailer' is no role; write one of brand, platform" in r.output
    assert not (tmp_path / "x.yaml").exists()


def test_policy_init_says_which_file_lacks_a_time_column(tmp_path):
    pd.DataFrame({"customer_id": [1, 2], "email": ["a@x.com", "b@x.com"]}).to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame({"customer_id": [1, 2], "value": [3.0, 4.0]}).to_csv(tmp_path / "o.csv", index=False)
    r = CliRunner().invoke(
        app,
        ["policy", "init", "--users", str(tmp_path / "u.csv"), "--key", "customer_id", "--identifier", "email=email",
         "--event", f"conversions={tmp_path / 'o.csv'}", "--to", str(tmp_path / "p.yaml")],
    )  # fmt: skip
    assert r.exit_code == 2
    assert "event table conversions: no column reads as dates or times" in r.output
    assert not (tmp_path / "p.yaml").exists()


def test_refresh_from_csv_files_then_query_a_period(server, tokens, pki, tmp_path, make_client, member_env):
    """`refresh` adds the users of a CSV file and retires those a second file names; queries can name a period."""
    from concurrent.futures import ThreadPoolExecutor

    runner = CliRunner()
    brand = member_env("brand")
    policy = DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 5") + (
        "refresh: {tables: [brand.users, brand.conversions], min_days_between: 0}\n"
    )
    b, p = make_client("brand"), make_client("platform")
    b.state_dir = tmp_path / "state-brand"  # the CLI's state directory: a refresh needs the match's key and rows
    c = b.create_collaboration(policy, "cli-living")
    b.approve_policy(c.id)
    p.approve_policy(c.id)
    data = generate(SyntheticConfig(brand_users=400, platform_users=500, shared=300, seed=3))
    old, new = data.brand_users.iloc[:350], data.brand_users.iloc[350:]
    ids = {"email": "email", "phone": "mobile"}
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(b.match, c.id, old, "customer_id", ids, ["tier"], wait_timeout=120),
            pool.submit(p.match, c.id, data.platform_users, "user_id", {"email": "email"}, ["age_band"]),
        ]
        [j.result() for j in jobs]
        new.to_csv(tmp_path / "new.csv", index=False)
        old.iloc[:20][["customer_id"]].to_csv(tmp_path / "gone.csv", index=False)
        platform_side = pool.submit(p.refresh, c.id, None, wait_timeout=120)
        r = runner.invoke(
            app,
            [
                "--no-progress",
                "-o",
                "json",
                "refresh",
                "cli-living",
                "--users",
                str(tmp_path / "new.csv"),
                "--key",
                "customer_id",
                "--identifier",
                "email=email",
                "--identifier",
                "phone=mobile",
                "--attribute",
                "tier",
                "--retire",
                str(tmp_path / "gone.csv"),
            ],
            env=brand,
        )
        platform_side.result()
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert (summary["period"], summary["new_rows"], summary["retired"]) == (1, 50, 20)
    assert (summary["own_set_size"], summary["peer_set_size"]) == (380, 500)
    answers = {}
    for period in ("0", "1"):
        r = runner.invoke(app, ["-o", "json", "--refresh-period", period, "overlap", "cli-living"], env=brand)
        assert r.exit_code == 0, r.output
        answers[period] = json.loads(r.output)["rows"]
        assert json.loads(r.output)["refresh_period"] == int(period)  # the answer says whose data it read
    r = runner.invoke(app, ["--refresh-period", "2", "overlap", "cli-living"], env=brand)
    assert r.exit_code == 1
    assert "period 2" in r.output
    # A deletion at once, without the peer: period 2 completes with it.
    old.iloc[20:21][["customer_id"]].to_csv(tmp_path / "erase.csv", index=False)
    r = runner.invoke(
        app, ["retire", "cli-living", "--users", str(tmp_path / "erase.csv"), "--key", "customer_id"], env=brand
    )
    assert r.exit_code == 0, r.output
    assert "1 users retired in period 2" in r.output
    # Asked without a period, the answer reads the latest (2) and says so; the report shows every answer, by period.
    r = runner.invoke(app, ["-o", "json", "overlap", "cli-living", "--by", "brand.tier"], env=brand)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["refresh_period"] == 2
    r = runner.invoke(app, ["report", "cli-living", "--to", str(tmp_path / "report")], env=brand)
    assert r.exit_code == 0, r.output
    page = (tmp_path / "report" / "index.html").read_text()
    headings = ["Data of the match (period 0)", "Data of refresh period 1", "Data of refresh period 2"]
    assert [page.index(h) for h in headings] == sorted(page.index(h) for h in headings)
    assert page.count('<section id="overlap') == 3


#: What a command that holds no table never needs (tests/product/test_startup.py holds the same when it fails).
TABLES = ("pandas", "pyarrow", "numpy", "tqdm")


def test_commands_that_hold_no_table_answer_without_loading_pandas(server, tokens, pki, tmp_path, active, member_env):
    """Commands whose answer is a few plain values print it without loading a table library.

    `ping`, `list`, `show`, `approve`, `audit head` and `compare`, `verify-audit-log`, `export-audit-log` and
    `policy merge`, each in a fresh interpreter, answer without pandas, numpy, pyarrow or tqdm (0.3-0.5 s of CPU at
    every start); those that check no policy on this machine without jsonschema either.
    """
    brand, auditor = (member_env(n) for n in ("brand", "auditor"))
    etag = json.loads(CliRunner().invoke(app, ["-o", "json", "show", active], env=brand).output)["policy_etag"]
    draft = tmp_path / "draft.yaml"
    draft.write_text(DEMO_POLICY)
    merged = tmp_path / "merged.yaml"
    commands = [
        (brand, ["ping"], "as brand (member)", ("jsonschema",)),
        (brand, ["list"], active, ("jsonschema",)),
        (brand, ["-o", "csv", "list"], f"{active},", ("jsonschema",)),
        (brand, ["-o", "json", "list"], f'"id": "{active}"', ("jsonschema",)),
        (brand, ["show", active], "approvals:", ("jsonschema",)),
        (brand, ["approve", active, "--etag", etag], "is active", ("jsonschema",)),
        (brand, ["audit", "head", active, "--to", str(tmp_path / "head.json")], "audit head", ("jsonschema",)),
        (brand, ["audit", "compare", active, str(tmp_path / "head.json")], "consistent", ("jsonschema",)),
        (auditor, ["export-audit-log", active, "--to", str(tmp_path / "log.jsonl")], "exported", ("jsonschema",)),
        (auditor, ["verify-audit-log", active], "True", ("jsonschema",)),
        (brand, ["policy", "merge", str(draft), "--to", str(merged)], "wrote", ()),
    ]
    for env, command, said, also in commands:
        probe = (
            "import sys\n"
            f"sys.argv = {['cleanroom-client', *command]!r}\n"
            "from cleanroom_client.cli import run\n"
            "try:\n"
            "    run()\n"
            "except SystemExit as exit:\n"
            "    assert exit.code in (0, None), exit.code\n"
            f"print(sorted(m for m in {TABLES + also!r} if m in sys.modules))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stderr[-2000:])
        *printed, loaded = done.stdout.strip().splitlines()
        assert said in "\n".join(printed) + done.stderr, (command, done.stdout, done.stderr)
        assert loaded == "[]", (command, loaded)
    assert "members:" in merged.read_text(encoding="utf-8")  # the merged policy, written
