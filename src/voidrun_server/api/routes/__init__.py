"""One router per resource. Each router carries its full ``/api/...`` prefix itself, so the
matched route template (used as the metrics label) is the public path."""
