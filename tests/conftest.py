"""Test-suite wide configuration: the shared real-kernel fixtures live in kernel_fixtures."""

# tests/ is not a package today; if it becomes one, the plugin's module name follows it.
pytest_plugins = [f"{__package__}.kernel_fixtures" if __package__ else "kernel_fixtures"]
