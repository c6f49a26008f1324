"""The server's DuckDB runs within the memory cap and spill directory it is given (ServerConfig.storage)."""

from __future__ import annotations

from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.storage import StorageLimits


def test_server_applies_memory_limit_and_spill_directory(start, tmp_path):
    spill = tmp_path / "spill"
    server = start(tmp_path / "data", storage=StorageLimits(memory_limit="256MiB", temp_directory=spill))
    # the catalogue and every collaboration's file: the same cap, a spill directory of their own
    for name, db in (("catalog", server.store.catalog), ("c-limits", server.store.create("c-limits"))):
        cur = db.cursor()
        limit = cur.execute("SELECT current_setting('memory_limit')").fetchone()
        directory = cur.execute("SELECT current_setting('temp_directory')").fetchone()
        assert limit is not None
        assert limit[0] == "256.0 MiB"
        assert directory is not None
        assert directory[0] == str(spill / name)
        assert (spill / name).is_dir()


def test_default_storage_keeps_duckdb_defaults(start, tmp_path):
    server = start(tmp_path / "data")
    for db, file in ((server.store.catalog, "catalog.duckdb"), (server.store.create("c-limits"), "c-limits.duckdb")):
        directory = db.cursor().execute("SELECT current_setting('temp_directory')").fetchone()
        assert directory is not None
        assert directory[0].endswith(file + ".tmp")


def test_serve_documents_the_options():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--memory-limit" in result.output
    assert "--spill-dir" in result.output
