"""Tracking engine: pure domain core, shard hosts and the runtimes that place them."""
