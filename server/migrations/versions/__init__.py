"""Alembic revisions: one module per schema change, never edited once released."""
