"""Alembic migrations: the one owner of Kiln's database schema."""
