"""audits that may crawl private addresses, the reason of a failed run, ids never reused

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    rebuild = "always" if op.get_bind().dialect.name == "sqlite" else "auto"  # PostgreSQL alters in place
    # SQLite reuses the largest rowid after a delete unless the table is AUTOINCREMENT: a removed audit's id would
    # name the next one (in scripts, webhooks and logs). The rebuild keeps the ids; PostgreSQL's sequences never
    # reuse one, so there the table kwarg changes nothing.
    with op.batch_alter_table("audits", recreate=rebuild, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("allow_private", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("audit_runs", recreate=rebuild, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("error_code", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch_op:
        batch_op.drop_column("error_code")
    with op.batch_alter_table("audits") as batch_op:
        batch_op.drop_column("allow_private")
