"""A local single-node Apache Kafka for development and tests (`minigit-server kafka ...`); not part of the service."""
