"""Unified skill data, benchmark loaders and the errors they raise."""
