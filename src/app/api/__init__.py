"""The Litestar API: app factory, WebSocket endpoints, health routes. Thin by design."""
