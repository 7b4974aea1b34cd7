"""minigit: a git-like client for a replicated repository service over Apache Kafka."""

__version__ = "0.1.0"
