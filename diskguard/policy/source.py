"""Where a limit's value came from: a kind code branches on, the key, and prose for people.

The kind decides (metrics `source` label, /status `source_kinds`, which Events a pod gets);
the text is only ever shown (Events, logs, /status `sources`), never read back.
"""

from __future__ import annotations

import enum

import attrs


class SourceKind(enum.Enum):
    """The setting a limit's value comes from."""

    ANNOTATION = "annotation"  # the pod's own limit annotation
    # The last good value of a limit annotation (the pod's or its namespace's) that is
    # invalid now.
    LAST_GOOD = "last good"
    KERNEL = "kernel"  # kept as the kernel holds it: the pod's key is invalid, no good value seen
    NAMESPACE = "namespace"  # the namespace's `default-*` annotation
    ENV_DEFAULT = "env default"  # CONTAINER_*_LIMIT
    SMART = "smart"  # the automatic (smart) limit
    EXCLUDED = "excluded"  # an excluded container: only the ceilings hold it


class SourceLabel(enum.StrEnum):
    """The short, stable name of a source: the metrics `source` label and /status
    `source_kinds`."""

    ANNOTATION = "annotation"
    NAMESPACE = "namespace"
    DEFAULT = "default"
    CEILING = "ceiling"
    KERNEL = "kernel"
    SMART = "smart"
    EXCLUDED = "excluded"


# A last good value counts as the pod's request, even when the key was the namespace's
# (as it always has: the label is part of the metrics interface).
_LABELS = {
    SourceKind.ANNOTATION: SourceLabel.ANNOTATION,
    SourceKind.LAST_GOOD: SourceLabel.ANNOTATION,
    SourceKind.KERNEL: SourceLabel.KERNEL,
    SourceKind.NAMESPACE: SourceLabel.NAMESPACE,
    SourceKind.ENV_DEFAULT: SourceLabel.DEFAULT,
    SourceKind.SMART: SourceLabel.SMART,
    SourceKind.EXCLUDED: SourceLabel.EXCLUDED,
}


@attrs.frozen
class Source:
    """One limit's origin. `clamped`: the value asked for was above a ceiling, which holds
    it instead (the kind still says who asked)."""

    kind: SourceKind
    text: str
    key: str = ""  # the annotation key or env variable, when there is one
    clamped: bool = False

    @property
    def label(self) -> SourceLabel:
        if self.clamped and self.kind is not SourceKind.SMART:
            return SourceLabel.CEILING
        return _LABELS[self.kind]

    @property
    def requested_by_pod(self) -> bool:
        """The value is what the pod's annotations ask (or asked, before turning invalid)."""
        return self.kind in (SourceKind.ANNOTATION, SourceKind.LAST_GOOD)

    def clamped_to(self, ceiling: str) -> Source:
        return attrs.evolve(self, text=f"{self.text}, clamped to the {ceiling}", clamped=True)

    def noted(self, note: str) -> Source:
        return attrs.evolve(self, text=f"{self.text}, {note}")

    def __str__(self) -> str:
        return self.text


ENV_DEFAULT = Source(SourceKind.ENV_DEFAULT, "env default")
