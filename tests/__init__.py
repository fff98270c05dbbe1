"""The test suite: one package, `tests`, mirroring `diskguard/` floor by floor.

Tests import shared helpers by their one import path (`from tests.agent.conftest import
Cluster`, `from tests.kernel_fixtures import LoopDisk`) or relatively within a folder; pytest
puts the repo root on sys.path (rootdir-relative package names, the default import mode).
"""
