"""Core engine pieces."""
