"""retain: fine-tune LLMs without silently forgetting."""

__version__ = "0.1.0"
