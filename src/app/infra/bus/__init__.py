"""Chat bus adapters: in-process (one server process) and Redis (several)."""
