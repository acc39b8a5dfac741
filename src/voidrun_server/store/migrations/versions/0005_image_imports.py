"""image imports: build status, error, progress, source and config; a sandbox's default cwd

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01

Existing images (the built-in ``code``) are ``ready``. ``config`` holds the imported image's
``env``/``workingDir``/``user``/``entrypoint``/``cmd``; ``sandboxes.workdir`` is the working
directory a sandbox's commands default to (its image's ``WorkingDir``), NULL for none.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="ready")
        )
        batch_op.add_column(sa.Column("error", sa.String(length=2000), nullable=True))
        batch_op.add_column(
            sa.Column("progress", sa.Integer(), nullable=False, server_default="100")
        )
        batch_op.add_column(
            sa.Column("source", sa.String(length=1024), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("config", sa.JSON(), nullable=True))
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("workdir", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("workdir")
    with op.batch_alter_table("images", schema=None) as batch_op:
        for column in ("config", "source", "progress", "error", "status"):
            batch_op.drop_column(column)
