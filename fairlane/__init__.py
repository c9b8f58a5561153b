"""Fairlane: tenant-fair sharing of one LLM engine."""

__version__ = "0.1.0"
