"""the node an image is built on

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

``images.node_id``: on a fleet (``VOIDRUN_ROLE=api``), the node an import runs on; NULL for
images built by an all-in-one server or the CLI. A restarted node fails only its own builds,
and a lost node's builds end ``error`` with it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("node_id")
