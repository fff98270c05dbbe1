"""Adapters to the node's kernel: block devices, cgroup hierarchies, IO-limit files.

Import from the modules (`diskguard.node.cgroups`, `.devices`, `.limits`, ...): this
package re-exports nothing.
"""
