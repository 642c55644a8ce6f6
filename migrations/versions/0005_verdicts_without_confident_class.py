"""verdicts without a confident class: label nullable, in_domain score

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("in_domain", sa.Float(), nullable=True))
        batch_op.alter_column("label", existing_type=sa.String(length=100), nullable=True)


def downgrade() -> None:
    # A verdict without a confident class had no such state before: it keeps its top class's name.
    op.execute(
        "UPDATE verdicts SET label = COALESCE(json_extract(top_k, '$[0][0]'), '?') WHERE label IS NULL"
        if op.get_bind().dialect.name == "sqlite"
        else "UPDATE verdicts SET label = COALESCE(top_k->0->>0, '?') WHERE label IS NULL"
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.alter_column("label", existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_column("in_domain")
