"""The HTTP API: scoring, interaction logging, admin, metrics."""
