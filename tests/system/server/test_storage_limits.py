"""The server's DuckDB runs within the memory cap and spill directory it is given (ServerConfig.storage)."""

from __future__ import annotations

from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.storage import StorageLimits


def test_server_applies_memory_limit_and_spill_directory(start, tmp_path):
    spill = tmp_path / "spill"
    server = start(tmp_path / "data", storage=StorageLimits(memory_limit="256MiB", temp_directory=spill))
    cur = server.db.cursor()
    limit = cur.execute("SELECT current_setting('memory_limit')").fetchone()
    directory = cur.execute("SELECT current_setting('temp_directory')").fetchone()
    assert limit is not None
    assert limit[0] == "256.0 MiB"
    assert directory is not None
    assert directory[0] == str(spill)
    assert spill.is_dir()


def test_default_storage_keeps_duckdb_defaults(start, tmp_path):
    server = start(tmp_path / "data")
    directory = server.db.cursor().execute("SELECT current_setting('temp_directory')").fetchone()
    assert directory is not None
    assert directory[0].endswith("cleanroom.duckdb.tmp")


def test_serve_documents_the_options():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--memory-limit" in result.output
    assert "--spill-dir" in result.output
