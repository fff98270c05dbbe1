"""diskguard: per-container disk IO limits for Kubernetes nodes."""
