"""nodes: the node daemons API replicas place sandboxes on

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

One row per ``voidrun-server node``, upserted at its start with a new epoch and heartbeated;
``sandboxes.node_id`` (since 0001) names the node holding each sandbox.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("tunnel", sa.String(length=300), nullable=False),
        sa.Column("cpu", sa.Integer(), nullable=False),
        sa.Column("mem_mb", sa.Integer(), nullable=False),
        sa.Column("disk_mb", sa.BigInteger(), nullable=False),
        sa.Column("max_sandboxes", sa.Integer(), nullable=False),
        sa.Column("committed_cpu", sa.Integer(), nullable=False),
        sa.Column("committed_mem_mb", sa.Integer(), nullable=False),
        sa.Column("sandbox_count", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sandboxes_node_id", "sandboxes", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_sandboxes_node_id", table_name="sandboxes")
    op.drop_table("nodes")
