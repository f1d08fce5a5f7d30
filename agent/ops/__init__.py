"""Running the agent for months: health, metrics, logging and secret masking, memory, backoff."""
