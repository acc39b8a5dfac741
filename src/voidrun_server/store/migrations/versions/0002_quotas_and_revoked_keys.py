"""org quotas and revoked key digests

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Quota columns are nullable: NULL means "the server default" (``VOIDRUN_ORG_MAX_*``), so
existing orgs follow the settings until an operator sets an override.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

QUOTA_COLUMNS = ("quota_max_sandboxes", "quota_cpu", "quota_mem_mb", "quota_disk_mb")


def upgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        for name in QUOTA_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))

    op.create_table(
        "revoked_api_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=24), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_hash"),
    )


def downgrade() -> None:
    op.drop_table("revoked_api_keys")
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        for name in reversed(QUOTA_COLUMNS):
            batch_op.drop_column(name)
