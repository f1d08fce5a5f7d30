"""The Prefect 1.x GraphQL API as the agent speaks it: the client (every operation), its transport, the
payload models."""
