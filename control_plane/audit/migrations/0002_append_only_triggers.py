"""Database-level append-only: triggers refuse UPDATE and DELETE on the ledger's tables.

The models and querysets refuse changes too; these catch whatever goes around the ORM
(raw SQL, a shell, another program with the database's password). Both raise an
integrity error. TRUNCATE and DROP are left to the table owner, like the schema itself.

SQLite note: when a later migration makes Django rebuild one of these tables (SQLite
can't alter most columns in place), the rebuild drops its triggers; such a migration
must run ``create_triggers`` again. ``tests/control_plane/audit`` checks that they exist.
"""

from django.db import migrations

TABLES = ("audit_receipt", "audit_logsubtree", "audit_treehead", "audit_nodekey")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
"""


def create_triggers(apps, schema_editor, tables=TABLES):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION, None)  # no parameters: its % are literal
        for table in tables:
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
            )
    elif vendor == "sqlite":
        for table in tables:
            for op in ("UPDATE", "DELETE"):
                schema_editor.execute(
                    f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
                )
    else:
        raise RuntimeError(f"no append-only triggers for database {vendor!r}")


def drop_triggers(apps, schema_editor, tables=TABLES):
    vendor = schema_editor.connection.vendor
    for table in tables:
        if vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        elif vendor == "sqlite":
            for op in ("update", "delete"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op}")
    if vendor == "postgresql" and tables == TABLES:
        schema_editor.execute("DROP FUNCTION IF EXISTS audit_refuse_change()")


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
