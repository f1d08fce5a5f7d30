"""Fault injection: real agents, the real server and the real Docker daemon (tests/support/chaos.py)."""
