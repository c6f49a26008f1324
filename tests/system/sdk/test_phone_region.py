"""Chinese mobile numbers under the default region US: warned about at once (CLI and SDK), with the fix named."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest

from cleanroom_client.errors import CleanRoomError
from cleanroom_client.identity import (
    IdentifierQualityWarning,
    IdentifierType,
    Normalizer,
    invalid_share_warning,
)

#: Mainland mobiles as a Chinese CRM holds them: 11 digits, no +86.
CN_MOBILES = [f"138{i:08d}" for i in range(400)] + [f"159{i * 7:08d}" for i in range(400)]
US_PHONES = [f"(415) 555-{i:04d}" for i in range(100)]


def test_chinese_mobiles_under_us_name_the_region():
    message = invalid_share_warning(Normalizer("US"), IdentifierType.PHONE, "mobile", CN_MOBILES)
    assert message is not None
    assert "100%" in message
    assert "--region CN" in message


def test_no_warning_when_the_region_fits_or_few_fail():
    assert invalid_share_warning(Normalizer("CN"), IdentifierType.PHONE, "mobile", CN_MOBILES) is None
    # 10% of a column failing is ordinary dirt, not a wrong region.
    mixed = CN_MOBILES[:90] + ["not a phone"] * 10
    assert invalid_share_warning(Normalizer("CN"), IdentifierType.PHONE, "mobile", mixed) is None


def test_an_email_column_of_something_else_is_named():
    message = invalid_share_warning(Normalizer("US"), IdentifierType.EMAIL, "email", US_PHONES)
    assert message is not None
    assert "email" in message


def test_sdk_warns_before_anything_is_sent(make_client):
    client = make_client("brand")
    frame = pd.DataFrame({"customer_id": range(len(CN_MOBILES)), "mobile": CN_MOBILES})
    # The collaboration does not exist: the warning comes before the first call to the server.
    with pytest.warns(IdentifierQualityWarning, match="--region CN"), pytest.raises(CleanRoomError):
        client.match("no-such-collab", frame, key="customer_id", identifiers={"phone": "mobile"})
    client.normalizer = Normalizer("CN")
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifierQualityWarning)
        with pytest.raises(CleanRoomError):
            client.match("no-such-collab", frame, key="customer_id", identifiers={"phone": "mobile"})


def test_cli_says_the_fix_and_takes_a_region_per_phone_column(server, tokens, pki, tmp_path):
    csv = tmp_path / "crm.csv"
    pd.DataFrame({"customer_id": range(len(CN_MOBILES)), "mobile": CN_MOBILES}).to_csv(csv, index=False)
    env = {
        **os.environ,
        "CLEANROOM_TARGET": f"localhost:{server.port}",
        "CLEANROOM_TOKEN": tokens["brand"],
        "CLEANROOM_CA": str(pki.ca),
        "CLEANROOM_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }
    base = [sys.executable, "-m", "cleanroom_client.cli", "--no-progress", "match", "no-such-collab"]
    args = ["--users", str(csv), "--key", "customer_id", "--identifier", "phone=mobile"]
    r = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "warning: mobile (phone): 100%" in r.stderr
    assert "use --region CN" in r.stderr
    r = subprocess.run([*base, *args, "--region", "phone=CN"], env=env, capture_output=True, text=True, timeout=120)
    assert "warning" not in r.stderr
    assert r.returncode == 1  # the collaboration does not exist: NotFound, after the check
