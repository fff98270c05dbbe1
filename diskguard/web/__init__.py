"""Read-only HTTP: server, Prometheus metrics and /status."""
