"""Pure policy (no I/O): limit values, annotations, label selectors, exclusions, resolution,
plans and smart-limit decisions."""
