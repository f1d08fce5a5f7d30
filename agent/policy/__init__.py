"""What a run config may ask of its container: the operator's policy and the typed host_config."""
