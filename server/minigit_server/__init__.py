"""minigit-server: replicas of the repository service, and a local Kafka for development."""
