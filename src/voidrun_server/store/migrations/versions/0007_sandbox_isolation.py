"""sandbox isolation: which driver runs each sandbox

Revision ID: 0007
Revises: 0006
Create Date: 2027-03-01

``isolation`` on ``POST /api/sandboxes`` (namespace, gvisor, microvm) picks the driver; every
sandbox made before this revision ran on the namespace driver.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("isolation", sa.String(length=32), nullable=False, server_default="namespace")
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("isolation")
