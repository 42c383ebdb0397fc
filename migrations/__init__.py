"""Alembic migrations, shipped in the wheel and configured from code (``service.store.schema``)."""
