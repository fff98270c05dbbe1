"""`kustomize build` for the subset of kustomize that deploy/ uses, in Python.

The tests must run where no kubectl/kustomize binary is installed, so deploy/ is built here:
`resources` (files and directories), `components` and JSON 6902 `patches` with a `target`.
Anything else in a kustomization is refused with a message, so a manifest that starts to
use a feature this builder does not know fails loudly instead of being built wrong. Where
`kubectl` is installed, test_components.py checks that both builds agree.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KUSTOMIZATION = "kustomization.yaml"
KINDS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}
_SUPPORTED = {"apiVersion", "kind", "resources", "components", "patches"}
_TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}


class KustomizeError(ValueError):
    pass


Object = dict[str, Any]


def load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / KUSTOMIZATION
    if not path.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION}")
    doc = yaml.safe_load(path.read_text()) or {}
    kind = doc.get("kind", "Kustomization")
    if kind not in KINDS or doc.get("apiVersion", KINDS[kind]) != KINDS[kind]:
        raise KustomizeError(
            f"{path}: not a {KINDS.get(kind, 'kustomize')} Kustomization/Component"
        )
    unknown = sorted(set(doc) - _SUPPORTED)
    if unknown:
        raise KustomizeError(f"{path}: {unknown} not supported by tests/deploy/kustomize.py")
    return dict(doc)


def build(directory: Path, components: Sequence[Path] = ()) -> list[Object]:
    """The objects `kustomize build` makes of `directory`, as if an overlay listed it as its
    only resource and `components` as its components."""
    objects = _build(directory, expect="Kustomization")
    for component in components:
        objects = _apply_component(component, objects)
    return objects


def _build(directory: Path, *, expect: str) -> list[Object]:
    kustomization = load_kustomization(directory)
    if kustomization.get("kind", "Kustomization") != expect:
        raise KustomizeError(f"{directory}: expected a {expect}")
    objects: list[Object] = []
    for entry in kustomization.get("resources") or []:
        objects += _resource(directory / entry)
    for component in kustomization.get("components") or []:
        objects = _apply_component(directory / component, objects)
    return _patch_all(directory, kustomization, objects)


def _apply_component(directory: Path, objects: list[Object]) -> list[Object]:
    kustomization = load_kustomization(directory)
    if kustomization.get("kind") != "Component":
        raise KustomizeError(f"{directory}: not a Component")
    if kustomization.get("components"):
        raise KustomizeError(f"{directory}: nested components are not supported")
    objects = list(objects)
    for entry in kustomization.get("resources") or []:
        objects += _resource(directory / entry)
    return _patch_all(directory, kustomization, objects)


def _resource(path: Path) -> list[Object]:
    if path.is_dir():
        return _build(path, expect="Kustomization")
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: not a Kubernetes object: {doc!r:.100}")
        found.append(doc)
    return found


def _patch_all(
    directory: Path, kustomization: Mapping[str, Any], objects: list[Object]
) -> list[Object]:
    _check_unique(objects, directory)
    for entry in kustomization.get("patches") or []:
        target = entry.get("target") or {}
        unknown = sorted(set(target) - _TARGET_KEYS) + sorted(
            set(entry) - {"target", "patch", "path"}
        )
        if unknown or not target:
            raise KustomizeError(f"{directory}: unsupported patch entry {entry} ({unknown})")
        text = entry["patch"] if "patch" in entry else (directory / entry["path"]).read_text()
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise KustomizeError(f"{directory}: only JSON 6902 patches (a list) are supported")
        matched = [i for i, obj in enumerate(objects) if _matches(obj, target)]
        if not matched:
            # kustomize itself accepts a patch that matches nothing; here it is a mistake.
            raise KustomizeError(f"{directory}: patch target {target} matches no object")
        for i in matched:
            try:
                objects[i] = jsonpatch.apply_patch(objects[i], operations)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise KustomizeError(f"{directory}: patch on {_key(objects[i])}: {exc}") from None
    return objects


def _matches(obj: Mapping[str, Any], target: Mapping[str, str]) -> bool:
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": (obj.get("metadata") or {}).get("name", ""),
        "namespace": (obj.get("metadata") or {}).get("namespace", ""),
    }
    return all(actual[k] == v for k, v in target.items())


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (
        str(obj["apiVersion"]),
        str(obj["kind"]),
        meta.get("namespace", ""),
        meta.get("name", ""),
    )


def _check_unique(objects: Iterable[Object], where: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = _key(obj)
        if key in seen:
            raise KustomizeError(f"{where}: {key} is defined twice")
        seen.add(key)


def by_key(objects: Iterable[Object]) -> dict[tuple[str, str, str, str], Object]:
    """Objects keyed by (apiVersion, kind, namespace, name), for comparing two builds."""
    return {_key(obj): copy.deepcopy(obj) for obj in objects}


def find(objects: Iterable[Object], kind: str, name: str | None = None) -> Object:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    if len(matches) != 1:
        raise KustomizeError(f"expected one {kind} {name or ''}, found {len(matches)}")
    return matches[0]
