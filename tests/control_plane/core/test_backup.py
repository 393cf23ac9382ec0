"""``python -m control_plane backup``: SQLite's online backup, a whole database or none."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest


def test_the_backup_is_a_whole_copy_of_the_running_database(control_plane_factory, tmp_path):
    cp = control_plane_factory()
    cp.manage("migrate", "-v0")
    cp.manage("create_operator", "audrey", "--role", "auditor")
    target = tmp_path / "backups" / "cp.sqlite3"
    target.parent.mkdir()

    printed = cp.manage("backup", "--to", str(target))

    assert printed["SANCTUM_BACKUP"] == str(target)
    assert not Path(f"{target}.partial").exists()
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT username FROM auth_user").fetchall() == [("audrey",)]
        assert copy.execute("SELECT count(*) FROM audit_treehead").fetchone() == (0,)


def test_postgresql_is_pointed_to_its_own_tools(control_plane_factory, tmp_path):
    cp = control_plane_factory(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(RuntimeError, match="pg_basebackup"):
        cp.manage("backup", "--to", str(tmp_path / "x"))
