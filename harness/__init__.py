"""The harness that drives a real `tracking serve` from outside: start and stop server processes,
mint tokens with the server's secret. Shared by the tests, the simulator and the load tests; the
server (`api/`) never imports it."""

from harness.server import PortTaken, ServerProcess, descendants, free_port, mint

__all__ = ["PortTaken", "ServerProcess", "descendants", "free_port", "mint"]
