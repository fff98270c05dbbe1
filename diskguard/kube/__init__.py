"""Adapters to the Kubernetes API server and the kubelet."""
