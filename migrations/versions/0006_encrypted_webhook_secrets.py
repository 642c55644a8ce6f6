"""webhook secrets encrypted at rest: room for a Fernet token

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Secrets stored before stay readable as they are (scanner.secretbox) and are encrypted when next written.
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=200), type_=sa.String(length=400))


def downgrade() -> None:
    # A token does not fit the old column and its secret cannot be recovered here without the key: such
    # webhooks lose their secret (and so must be set again) rather than the downgrade failing.
    op.execute("UPDATE audits SET webhook_secret = NULL, webhook_url = NULL WHERE length(webhook_secret) > 200")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=400), type_=sa.String(length=200))
