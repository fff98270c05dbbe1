"""Kubernetes object names and label syntax (apimachinery's pkg/util/validation), once.

Everything that checks a name - the label-selector parser, the exclusion filter, the
configuration, the fake API server - uses these. ASCII-only character classes as in Go,
always with `fullmatch`: Python's `$` would also accept a trailing newline.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
# The name part of a label key (after an optional DNS-subdomain prefix and '/').
QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_dns1123_label(value: str) -> bool:
    """A namespace name (and any other RFC 1123 label name)."""
    return len(value) <= DNS1123_LABEL_MAX and DNS1123_LABEL_RE.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """A pod or node name, an annotation prefix (an RFC 1123 subdomain)."""
    return len(value) <= DNS1123_SUBDOMAIN_MAX and DNS1123_SUBDOMAIN_RE.fullmatch(value) is not None
