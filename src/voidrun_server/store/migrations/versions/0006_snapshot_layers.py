"""snapshot images: the image a snapshot was made from and the layers below it

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-08

A snapshot image (``POST /api/sandboxes/{id}/snapshot``) is one layer over the image its
sandbox ran on. ``parent_id`` names that image (deleting it is refused while snapshots build
on it); ``layers`` lists the root filesystems below the image's own, nearest first (empty for
every other image).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("layers", sa.JSON(), nullable=True))
        batch_op.create_index("ix_images_parent_id", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_parent_id")
        batch_op.drop_column("layers")
        batch_op.drop_column("parent_id")
