"""The ``voidrun-server`` command line."""
