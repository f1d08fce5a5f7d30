"""GraphQL documents the agent sends (package data); see agent/cloud.py."""
