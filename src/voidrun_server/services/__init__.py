"""Decisions: what a request means for the system. Routes call these; these call the store and
the drivers."""
