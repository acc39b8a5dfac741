"""HTTP, SSE and WebSocket: routing, auth, envelopes and the error table."""
