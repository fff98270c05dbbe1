"""Which pods and containers the exclusion rules match.

Pure decisions over the parsed pod model; the defaults live in the config module. Every
decision is an `Exclusion`: the rule that matched (typed, so the planner can tell the
administrator's rules from the ones a tenant can satisfy) and a short human reason for
logs and status.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

import attrs

from diskguard.model import ContainerInfo, PodInfo
from diskguard.policy.labels import Selector, SelectorError, parse_selector
from diskguard.policy.names import DNS1123_LABEL_MAX, is_dns1123_label

FilterField = Literal["keywords", "namespaces", "label_selector", "regex"]

# A namespace name is a DNS-1123 label; a configured name that cannot be one is a typo
# that would otherwise silently exclude nothing.


class FilterConfigError(ValueError):
    """One exclusion input is invalid; `field` says which one."""

    def __init__(self, field: FilterField, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field: FilterField = field


class ExclusionRule(enum.Enum):
    """Which configured rule excluded a container."""

    NAMESPACE = "namespace"  # EXCLUDE_NAMESPACES
    LABEL_SELECTOR = "label_selector"  # EXCLUDE_LABEL_SELECTOR, on the pod's labels
    KEYWORD = "keyword"  # EXCLUDE_KEYWORDS, in the container's name or image
    REGEX = "regex"  # EXCLUDE_REGEX, on namespace/pod/container

    @property
    def tenant_controlled(self) -> bool:
        """Whether whoever creates the pod decides if the rule matches. Pod labels, pod and
        container names and images are the tenant's; the namespace a pod runs in is the
        administrator's (tenants cannot create or rename namespaces)."""
        return self is not ExclusionRule.NAMESPACE


@attrs.frozen
class Exclusion:
    rule: ExclusionRule
    reason: str


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@attrs.frozen
class ExclusionFilter:
    """Exclusion rules; an empty filter excludes nothing.

    `label_selector` is matched against pod labels and a match excludes the pod. Note that
    an empty Selector matches every pod: `from_strings` turns a blank selector into None.
    Keywords are case-sensitive substrings of the container name or image; `regex` is
    searched (not anchored) in "namespace/pod/container".
    """

    keywords: tuple[str, ...] = ()
    namespaces: frozenset[str] = frozenset()
    label_selector: Selector | None = None
    regex: re.Pattern[str] | None = None

    @classmethod
    def from_strings(
        cls, keywords: str, namespaces: str, label_selector: str, regex: str
    ) -> ExclusionFilter:
        """Build from the raw config strings (comma lists, selector text, regex text).

        Blank items are ignored; a blank selector or regex means "no such rule".
        Raises FilterConfigError naming the bad input and why.
        """
        keyword_items = tuple(dict.fromkeys(_split_list(keywords)))

        namespace_items = _split_list(namespaces)
        for ns in namespace_items:
            if not is_dns1123_label(ns):
                raise FilterConfigError(
                    "namespaces",
                    f"{ns!r} is not a valid namespace name (lower case alphanumeric "
                    f"characters or '-', starting and ending with an alphanumeric character, "
                    f"at most {DNS1123_LABEL_MAX} characters)",
                )

        selector: Selector | None = None
        if label_selector.strip():
            try:
                selector = parse_selector(label_selector.strip())
            except SelectorError as exc:
                raise FilterConfigError("label_selector", f"invalid label selector: {exc}") from exc

        pattern: re.Pattern[str] | None = None
        if regex.strip():
            try:
                pattern = re.compile(regex.strip())
            except re.error as exc:
                raise FilterConfigError(
                    "regex", f"invalid regular expression {regex.strip()!r}: {exc}"
                ) from exc

        return cls(
            keywords=keyword_items,
            namespaces=frozenset(namespace_items),
            label_selector=selector,
            regex=pattern,
        )

    def pod_exclusion(self, pod: PodInfo) -> Exclusion | None:
        """Why the whole pod is excluded, or None. The namespace rule is checked first, so
        a pod in an excluded namespace is always reported as excluded by the administrator."""
        if pod.namespace in self.namespaces:
            return Exclusion(ExclusionRule.NAMESPACE, f"namespace {pod.namespace} is excluded")
        if self.label_selector is not None and self.label_selector.matches(pod.labels):
            return Exclusion(
                ExclusionRule.LABEL_SELECTOR,
                f"pod labels match exclusion selector '{self.label_selector}'",
            )
        return None

    def container_exclusion(self, pod: PodInfo, container: ContainerInfo) -> Exclusion | None:
        """Why this container is excluded (pod-level reasons included), or None."""
        exclusion = self.pod_exclusion(pod)
        if exclusion is not None:
            return exclusion
        for keyword in self.keywords:
            if keyword in container.name:
                return Exclusion(
                    ExclusionRule.KEYWORD,
                    f"container name {container.name} contains excluded keyword '{keyword}'",
                )
            if keyword in container.image:
                return Exclusion(
                    ExclusionRule.KEYWORD,
                    f"image {container.image} contains excluded keyword '{keyword}'",
                )
        if self.regex is not None:
            path = f"{pod.namespace}/{pod.name}/{container.name}"
            if self.regex.search(path):
                return Exclusion(
                    ExclusionRule.REGEX, f"{path} matches exclusion regex '{self.regex.pattern}'"
                )
        return None
