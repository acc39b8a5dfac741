"""watch tickets shared by replicas; the images each node holds

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

``watch_tickets``: a file-watch ticket waits here for its WebSocket, so any API replica can
take it (``VOIDRUN_ROLE=api`` or a PostgreSQL database). ``nodes.images``: the ``name:tag``
images a node holds, for placement.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watch_tickets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=24), nullable=False),
        sa.Column("sandbox_id", sa.String(length=24), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("recursive", sa.Boolean(), nullable=False),
        sa.Column("ignore_hidden", sa.Boolean(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("watch_tickets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_watch_tickets_org_id"), ["org_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_watch_tickets_expires_at"), ["expires_at"], unique=False
        )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        # NULL: not reported yet (a node of an older version): placement assumes it holds all
        batch_op.add_column(sa.Column("images", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("images")
    op.drop_table("watch_tickets")
