"""key epoch: a counter bumped by every key revocation or deactivation

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10

Servers cache authenticated API keys in memory; the counter tells them, with one tiny read, that
some key stopped being valid (``services/keycache.py``). The single row exists from the start.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "key_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0}])


def downgrade() -> None:
    op.drop_table("key_epoch")
