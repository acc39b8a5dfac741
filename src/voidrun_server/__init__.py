"""VoidRun-compatible sandbox server.

Keep this module import-free: the in-sandbox agent lives in ``voidrun_server.agent`` and must be
importable without pulling in the server.
"""

__version__ = "0.1.0"
