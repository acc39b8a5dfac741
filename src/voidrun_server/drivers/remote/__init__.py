"""Sandboxes on other machines: the driver an API replica uses for each node daemon."""
