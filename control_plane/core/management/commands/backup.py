"""``python -m control_plane backup --to FILE``: an online backup of the SQLite database.

SQLite's backup API copies a consistent snapshot page by page while the control plane
keeps running (readers and the collector's writes go on; a write during the copy makes
SQLite restart the copy of what changed). The file is written beside ``FILE`` and
renamed into place once complete, so ``FILE`` is never half a database. PostgreSQL is
backed up with its own tools (base backup and WAL archive): docs/operations.md,
"Backups and restore".
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

PAGES_PER_STEP = 1024


class Command(BaseCommand):
    help = "Copy the SQLite database to FILE while the control plane runs (online backup)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", required=True, type=Path, help="the backup file to write")

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "sqlite":
            raise CommandError(
                "the database is PostgreSQL: back it up with pg_basebackup and a WAL "
                "archive (point-in-time recovery), see docs/operations.md"
            )
        target: Path = options["to"].resolve()
        if target == Path(str(connection.settings_dict["NAME"])).resolve():
            raise CommandError("the backup file can't be the database itself")
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        connection.ensure_connection()
        source = connection.connection
        assert isinstance(source, sqlite3.Connection)
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy, pages=PAGES_PER_STEP)
            check = copy.execute("PRAGMA integrity_check").fetchone()
        finally:
            copy.close()
        if check != ("ok",):
            partial.unlink(missing_ok=True)
            raise CommandError(f"the copy failed its integrity check: {check}")
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stdout.write(f"SANCTUM_BACKUP={target}")
