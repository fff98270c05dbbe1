"""The package version (the image build may rewrite this file from its VERSION build-arg)."""

__version__ = "0.2.0.dev0"
