"""GraphQL documents the agent sends (package data); `agent.api.cloud` loads and sends them."""
