"""Reading deploy/ and checking it: offline schema validation, env, kustomization.

Each check is a function that raises `ManifestError` (or a jsonschema ValidationError)
with a message naming the file and the problem, so the tests can show that a broken
manifest is caught as well as that the real one passes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import kubernetes_validate
import yaml

from .kustomize import KINDS as KUSTOMIZE_KINDS
from .kustomize import build

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPONENTS_DIR = DEPLOY / "components"
# Every optional component, by its directory name.
COMPONENTS = {p.name: p for p in sorted(COMPONENTS_DIR.iterdir()) if p.is_dir()}
KUSTOMIZATION = "kustomization.yaml"

# Validated against the oldest and the newest Kubernetes the schemas cover that we claim
# to run on: a field that only exists in newer releases fails the old one.
OLDEST_KUBERNETES = "1.27"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())
# components/admission-policy: admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy and
# the node-name user extra of bound ServiceAccount tokens.
ADMISSION_POLICY_KUBERNETES = "1.30"


def built(*components: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` makes of deploy/ plus the named components."""
    return build(DEPLOY, [COMPONENTS[name] for name in components])


class ManifestError(AssertionError):
    pass


@attrs.frozen
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name", ""))

    def __str__(self) -> str:
        return f"{self.path.name} ({self.kind}/{self.name})"


def load_manifests(directory: Path = DEPLOY) -> list[Manifest]:
    """Every YAML document in `directory` (kustomization.yaml included), in file order."""
    found = []
    for path in sorted(directory.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{path.name}: a document is not a mapping: {doc!r}")
            found.append(Manifest(path, doc))
    return found


def kubernetes_objects(manifests: Iterable[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m.path.name != KUSTOMIZATION]


def one(manifests: Iterable[Manifest], kind: str) -> Manifest:
    matches = [m for m in manifests if m.kind == kind]
    if len(matches) != 1:
        raise ManifestError(f"expected exactly one {kind} in deploy/, found {len(matches)}")
    return matches[0]


def validate_schema(doc: Mapping[str, Any], version: str) -> None:
    """Strict OpenAPI schema validation (unknown fields are errors), fully offline.

    Raises ManifestError naming the field, also for a kind the schemas do not know (a
    misspelt kind or apiVersion)."""
    what = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        field = ".".join(str(p) for p in exc.path) or "(top level)"
        raise ManifestError(
            f"{what} is invalid for Kubernetes {exc.version}: {field}: {exc.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{what}: {exc.message}") from None


# -- the DaemonSet ----------------------------------------------------------------------


def agent_container(daemonset: Mapping[str, Any]) -> dict[str, Any]:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        raise ManifestError(f"the DaemonSet should have one container, has {len(containers)}")
    return dict(containers[0])


def only_daemonset(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The one DaemonSet among built objects."""
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    return dict(ds)


def host_paths(spec: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """mountPath -> host path of each hostPath volume the container mounts."""
    volumes = {v["name"]: v for v in spec["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: volumes[m["name"]]["hostPath"]["path"]
        for m in container["volumeMounts"]
        if m["name"] in volumes
    }


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The env entries with a literal value (valueFrom entries are left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}


def check_env_names(container: Mapping[str, Any], known: frozenset[str]) -> None:
    names = [e["name"] for e in container.get("env") or []]
    unknown = sorted(set(names) - known)
    if unknown:
        raise ManifestError(
            f"the DaemonSet sets {unknown}, which diskguard does not read (known: {sorted(known)})"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"the DaemonSet sets {duplicates} more than once")


def check_paths_mounted(container: Mapping[str, Any], paths: Iterable[str]) -> None:
    """Each host path the agent reads must be inside one of the container's mounts."""
    mounts = [Path(m["mountPath"]) for m in container.get("volumeMounts") or []]
    for path in paths:
        if not any(Path(path).is_relative_to(m) for m in mounts):
            raise ManifestError(f"{path} is used by the agent but mounted from no volume")


# -- kustomization ----------------------------------------------------------------------


def check_kustomization(directory: Path = DEPLOY) -> None:
    """kustomization.yaml lists every manifest in `directory` once, and nothing else (a
    Kustomization in deploy/, a Component in each of deploy/components/*)."""
    kustomization = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    kind = "Component" if directory.parent == COMPONENTS_DIR else "Kustomization"
    if kustomization.get("apiVersion") != KUSTOMIZE_KINDS[kind] or (
        kustomization.get("kind") != kind
    ):
        raise ManifestError(f"{KUSTOMIZATION}: not a {KUSTOMIZE_KINDS[kind]} {kind}")
    listed = list(kustomization.get("resources") or [])
    duplicates = sorted({r for r in listed if listed.count(r) > 1})
    if duplicates:
        raise ManifestError(f"{KUSTOMIZATION} lists {duplicates} more than once")
    present = {p.name for p in directory.glob("*.y*ml")} - {KUSTOMIZATION}
    missing = sorted(present - set(listed))
    extra = sorted(set(listed) - present)
    if missing or extra:
        raise ManifestError(
            f"{KUSTOMIZATION} does not match deploy/: not listed {missing}, listed but "
            f"absent {extra}"
        )


def mutated(
    doc: Mapping[str, Any], path: str, *, rename_to: str | None = None, value: Any = None
) -> dict[str, Any]:
    """A deep copy of `doc` with the key at dotted `path` renamed or its value replaced
    (list indexes are numbers): how the tests break a manifest on purpose."""
    broken = copy.deepcopy(dict(doc))
    *parents, last = path.split(".")
    node: Any = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if rename_to is not None:
        node[rename_to] = node.pop(last)
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return broken
