"""Graph rewrites, one per module, each with its own test."""
