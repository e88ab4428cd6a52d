"""flowgate's domain: entities, rules, services and the ports they need.

Imports only the standard library and msgspec. Adapters live in ``app.infra``; the Litestar
API in ``app.api``.
"""
