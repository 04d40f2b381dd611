"""What the PostgreSQL stores (the checkpoint witness, the audit index) share."""

from __future__ import annotations

from typing import Any

import psycopg


def make_table(db: psycopg.Connection[Any], *statements: str) -> None:
    """Run CREATE ... IF NOT EXISTS ``statements`` one writer at a time: two at once
    race in PostgreSQL's catalogue, and the second fails ("duplicate key value violates
    unique constraint pg_type_typname_nsp_index")."""
    db.execute("SELECT pg_advisory_lock(hashtext('aios:schema'))")
    try:
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtext('aios:schema'))")
        db.commit()
