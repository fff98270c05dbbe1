"""The eBPF programs' C sources, installed as the package `diskguard.bpf` (package data).

The sources live in the repository's top-level `bpf/` folder; pyproject.toml maps that
folder into the package, so a wheel carries them and `importlib.resources` finds them in
a checkout and in an installed package alike.
"""
