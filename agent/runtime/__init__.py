"""Container engines behind one port: the Docker engine (docker-py) and its vocabulary."""
