"""API tokens: expiry, revocation time and scopes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 01:20:00

Existing tokens keep working as before: no expiry and every scope.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('scopes', sa.String(length=255), nullable=False,
                                   server_default='sessions:read sessions:write'))


def downgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('scopes')
        batch.drop_column('expires_at')
        batch.drop_column('revoked_at')
