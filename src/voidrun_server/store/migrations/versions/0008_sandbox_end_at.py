"""sandbox end time: the E2B API's ``timeout``

Revision ID: 0008
Revises: 0007
Create Date: 2027-04-01

A sandbox created (or connected to, or given a timeout) through ``/e2b`` ends at ``end_at``:
killed, or paused when ``on_timeout`` is ``pause`` (E2B's ``autoPause``). Sandboxes of the
VoidRun API have no end time (NULL) and follow the auto-sleep ladder only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("end_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("on_timeout", sa.String(length=8), nullable=False, server_default="kill")
        )


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("on_timeout")
        batch_op.drop_column("end_at")
