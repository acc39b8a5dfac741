"""sandbox network policy: the egress policy a sandbox was created or updated with

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-20

``{"allowInternetAccess", "allowOut", "denyOut"}`` (docs/network.md); NULL for sandboxes
without networking (created before it, or on a server that has it off).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("network")
