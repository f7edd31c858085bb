"""drip: a self-hosted email course and newsletter pipeline."""

__version__ = "0.1.0"
