"""One flow run's way from the queue to a started container: admission, claim, pull, plan, launch."""
