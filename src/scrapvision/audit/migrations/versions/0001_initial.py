"""Initial audit schema: decisions, reviews, per-minute tally rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_decisions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("frame_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128)),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("in_time", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("capture_time", sa.Float),
        sa.Column("fire_time", sa.Float),
        sa.Column("belt_position", sa.Float),
        sa.Column("class_name", sa.String(64)),
        sa.Column("confidence", sa.Float),
        sa.Column("margin", sa.Float),
        sa.Column("bin", sa.String(64)),
        sa.Column("top_k", sa.JSON, nullable=False),
        sa.Column("frame_hash", sa.String(64)),
        sa.Column("frame_reason", sa.String(16)),
    )
    op.create_index("ix_audit_decisions_line_time", "audit_decisions", ["line", "time"])
    op.create_index("ix_audit_decisions_time", "audit_decisions", ["time"])
    op.create_index("ix_audit_decisions_class", "audit_decisions", ["class_name", "time"])
    op.create_index("ix_audit_decisions_action_bin", "audit_decisions", ["action", "bin"])
    op.create_index("ix_audit_decisions_model", "audit_decisions",
                    ["model_name", "model_version"])
    op.create_index("ix_audit_decisions_frame_hash", "audit_decisions", ["frame_hash"])

    op.create_table(
        "audit_reviews",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("decision_id", Id,
                  sa.ForeignKey("audit_decisions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_reviews_decision", "audit_reviews", ["decision_id", "id"])
    op.create_index("ix_audit_reviews_time", "audit_reviews", ["time"])

    op.create_table(
        "audit_tally_minutes",
        sa.Column("line", sa.String(64), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("class_name", sa.String(64), primary_key=True),
        sa.Column("bin", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("missed_deadline", sa.BigInteger, nullable=False),
        sa.Column("latency_ms_sum", sa.Float, nullable=False),
        sa.Column("first_time", sa.Float, nullable=False),
        sa.Column("last_time", sa.Float, nullable=False),
    )
    op.create_index("ix_audit_tally_minutes_minute", "audit_tally_minutes", ["minute"])


def downgrade() -> None:
    op.drop_table("audit_tally_minutes")
    op.drop_table("audit_reviews")
    op.drop_table("audit_decisions")
