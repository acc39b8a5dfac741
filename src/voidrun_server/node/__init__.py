"""The node daemon (``voidrun-server node``): drivers, agents and sandboxes of one host behind
an internal API (``internal.py``) and a tunnel for the data plane (``tunnel.py``)."""
