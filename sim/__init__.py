"""Synthetic riders and watchers that drive a real tracking server and measure what they see."""
