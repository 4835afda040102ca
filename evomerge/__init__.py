"""evomerge: evolutionary search for LLM merge recipes."""

__version__ = "0.1.0"
