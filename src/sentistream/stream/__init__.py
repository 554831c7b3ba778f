"""The streaming pipeline: sources -> clean -> micro-batch -> classify -> sinks."""
