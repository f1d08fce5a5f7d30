"""A small, real Prefect Server 1.x-compatible GraphQL API (see server/README.md)."""

__version__ = "0.1.0"
