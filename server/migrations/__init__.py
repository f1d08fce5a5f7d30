"""The Alembic script directory of the server's schema (run through `server.migrate`, no alembic.ini)."""
