"""The Spark jobs (``minigit-server audit --engine spark``, ``minigit-server activity``):
PySpark is imported only here, and only by the commands that run a job (the
``spark`` extra). Spark reads Kafka with its own connector (the Kafka source),
never with minigit's Kafka modules; what it computes it computes with minigit's
own code run in Spark's Python workers. See docs/spark.md."""
