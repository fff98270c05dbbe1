"""Test and demo helpers, kept apart from the agent (like `trio.testing`).

`fakeapi` (a faithful fake Kubernetes API server), `fakekubelet`, `lab` (loop disks,
kubelet-layout cgroups, fio), `oracle` (the expected-limits oracle) and `threadserver`
(the threaded hypercorn base both fakes use). Only the demo, the tests and the benchmarks
import this package; the agent never does. The fake API server's extra dependencies come
with the `demo` extra.
"""
