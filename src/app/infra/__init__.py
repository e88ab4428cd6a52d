"""Adapters that implement the domain's ports: SQL, Redis, in-memory, JWT, model providers."""
