"""Hostile run configs against the agent's policy, judged by what the Docker daemon actually created."""
