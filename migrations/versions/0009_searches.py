"""searches: hyperparameter searches whose trials are ordinary jobs

`searches` holds a search's definition (base spec, space, objective, sampler, pruner), its state
and the lease of the API process that drives it; `search_trials` what the controller last saw of
each trial (job, parameters, state, objective per epoch), so the API reads a search without
touching Optuna's storage. A trial's job says which search and which trial it is
(`jobs.search_id`, `jobs.trial_number`, unique together). Optuna's own tables live apart (its
own database file or schema, with its own Alembic version table): nothing of them here.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('searches',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('space', JSON, nullable=False),
    sa.Column('objective', JSON, nullable=False),
    sa.Column('sampler', JSON, nullable=False),
    sa.Column('pruner', JSON, nullable=False),
    sa.Column('max_trials', sa.Integer(), nullable=False),
    sa.Column('max_concurrent', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=True),
    sa.Column('study_name', sa.String(length=128), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('best_trial', sa.Integer(), nullable=True),
    sa.Column('model', JSON, nullable=True),
    sa.Column('importances', JSON, nullable=True),
    sa.Column('error', JSON, nullable=True),
    sa.Column('waiting_for', sa.Text(), nullable=True),
    sa.Column('settled', sa.Boolean(), nullable=False),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_searches_tenant_created', 'searches', ['tenant', 'created_at', 'id'], unique=False)
    op.create_index('ix_searches_settled', 'searches', ['settled'], unique=False)
    op.create_table('search_trials',
    sa.Column('search_id', sa.String(length=32), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('params', JSON, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('intermediate', JSON, nullable=False),
    sa.Column('epochs', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['search_id'], ['searches.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('search_id', 'number')
    )
    op.create_index('ix_search_trials_job_id', 'search_trials', ['job_id'], unique=False)
    # Plain ADD COLUMNs and an index: the jobs table is never rebuilt (on SQLite a rebuild
    # drops the table its children's rows cascade from).
    op.add_column('jobs', sa.Column('search_id', sa.String(length=32), nullable=True))
    op.add_column('jobs', sa.Column('trial_number', sa.Integer(), nullable=True))
    op.create_index('uq_jobs_search_trial', 'jobs', ['search_id', 'trial_number'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_jobs_search_trial', table_name='jobs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('trial_number')
        batch_op.drop_column('search_id')
    op.drop_index('ix_search_trials_job_id', table_name='search_trials')
    op.drop_table('search_trials')
    op.drop_index('ix_searches_settled', table_name='searches')
    op.drop_index('ix_searches_tenant_created', table_name='searches')
    op.drop_table('searches')
