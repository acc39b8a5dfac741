"""The in-sandbox agent: the first process of every sandbox.

Stdlib-only and python3 >= 3.9, with relative imports only: inside a sandbox this directory is
mounted read-only and imported as the top-level package ``voidrun_agent`` (see
``voidrun_server.agent_launch``, host code); on the host it is ``voidrun_server.agent``. It must
never import the server.
"""
