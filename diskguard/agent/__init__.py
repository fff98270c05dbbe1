"""The trio process: wiring and one nursery (run), the reconciler, and the namespace,
measuring and smart-limit tasks."""
