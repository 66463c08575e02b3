"""Loopback fake servers that implement each provider's documented contract."""
