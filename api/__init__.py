"""HTTP and WebSocket front end of the tracking service."""
