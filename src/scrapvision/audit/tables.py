"""Audit schema (SQLAlchemy Core): decisions, human reviews, per-minute tally rollups.

Times are unix seconds (float) as in `DecisionRecord`, so SQLite and PostgreSQL compare
and index them the same way. Reviews live in their own table: a correction is a new row,
the decision row is never updated. Rollups carry '' instead of NULL for a missing class or
bin, because their key must be a primary key on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

# Autoincrement ids: BIGSERIAL on PostgreSQL, the rowid alias on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

decisions = Table(
    "audit_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("line", String(64), nullable=False),
    Column("frame_id", String(128), nullable=False),
    Column("item_id", String(128)),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("in_time", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("capture_time", Float),
    Column("fire_time", Float),
    Column("belt_position", Float),
    Column("class_name", String(64)),
    Column("confidence", Float),
    Column("margin", Float),
    Column("bin", String(64)),
    Column("top_k", JSON, nullable=False),
    Column("frame_hash", String(64)),
    Column("frame_reason", String(16)),
    Index("ix_audit_decisions_line_time", "line", "time"),
    Index("ix_audit_decisions_time", "time"),
    Index("ix_audit_decisions_class", "class_name", "time"),
    Index("ix_audit_decisions_action_bin", "action", "bin"),
    Index("ix_audit_decisions_model", "model_name", "model_version"),
    Index("ix_audit_decisions_frame_hash", "frame_hash"),
)

reviews = Table(
    "audit_reviews",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("decision_id", Id, ForeignKey("audit_decisions.id", ondelete="CASCADE"),
           nullable=False),
    Column("time", Float, nullable=False),
    Column("reviewer", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("label", String(64), nullable=False),
    Index("ix_audit_reviews_decision", "decision_id", "id"),
    Index("ix_audit_reviews_time", "time"),
)

tally_minutes = Table(
    "audit_tally_minutes",
    metadata,
    Column("line", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # unix seconds at the minute's start
    Column("class_name", String(64), primary_key=True),
    Column("bin", String(64), primary_key=True),
    Column("action", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("missed_deadline", BigInteger, nullable=False),  # decided, but after fire time
    Column("latency_ms_sum", Float, nullable=False),
    Column("first_time", Float, nullable=False),
    Column("last_time", Float, nullable=False),
    Index("ix_audit_tally_minutes_minute", "minute"),
)
