"""`docker run` arguments that run an image the way a DaemonSet of deploy/ runs it.

The mounts, environment and arguments are read from the DaemonSet itself, so the image
lane and the manifest cannot drift: a volume added to the DaemonSet is mounted here too.
What a test changes (the data disk's host path, the kubelet root, the HTTP address, the
API server) is passed as explicit overrides.

`privileged: true` cannot be exercised on the development VM (it lacks CAP_SYS_RESOURCE,
so runc fails "unable to apply caps"): the lane replaces it with every
other capability, no seccomp or AppArmor profile, and the host network. Nodes keep
`privileged: true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRIVILEGED_ON_THIS_VM = (
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
)


def docker_run_args(
    daemonset: Mapping[str, Any],
    *,
    node_name: str,
    config_maps: Mapping[str, Mapping[str, str]] = {},
    host_paths: Mapping[str, str] = {},
    env: Mapping[str, str] = {},
    extra_mounts: Mapping[str, str] = {},
    container: str = "diskguard",
) -> list[str]:
    """Options for `docker run` (before the image name) and, after it, the arguments.

    config_maps: ConfigMap name -> data, for `configMapKeyRef` variables.
    host_paths: volume name -> host path replacing that hostPath volume's path.
    env: variables set or replaced after the DaemonSet's own.
    extra_mounts: host path -> container path, read-only (e.g. a kubeconfig).
    container: the (init) container of the pod template to run.
    """
    spec = daemonset["spec"]["template"]["spec"]
    chosen = _container(daemonset, container)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    opts: list[str] = ["--network=host"]
    if (chosen.get("securityContext") or {}).get("privileged"):
        opts += PRIVILEGED_ON_THIS_VM
    for mount in chosen.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        if "hostPath" in volume:
            source = host_paths.get(mount["name"], volume["hostPath"]["path"])
            flags = ["ro" if mount.get("readOnly") else "rw"]
            if mount.get("mountPropagation") == "HostToContainer":
                flags.append("rslave")
            elif mount.get("mountPropagation") == "Bidirectional":
                flags.append("rshared")
            opts.append(f"--volume={source}:{target}:{','.join(flags)}")
        elif "emptyDir" in volume:
            opts.append(f"--mount=type=volume,destination={target}")
        else:
            raise ValueError(f"volume {mount['name']}: only hostPath and emptyDir are mapped")
    for source, target in extra_mounts.items():
        opts.append(f"--volume={source}:{target}:ro")
    values: dict[str, str] = {}
    for var in chosen.get("env", []):
        if "value" in var:
            values[var["name"]] = str(var["value"])
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            values[var["name"]] = node_name
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            values[var["name"]] = str(config_maps[ref["name"]][ref["key"]])
        else:
            raise ValueError(f"env {var['name']}: no mapping for {var.get('valueFrom')}")
    values.update(env)
    opts += [f"--env={name}={value}" for name, value in values.items()]
    return opts


def container_args(daemonset: Mapping[str, Any], container: str = "diskguard") -> list[str]:
    chosen = _container(daemonset, container)
    return [*chosen.get("command", []), *chosen.get("args", [])]


def _container(daemonset: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    spec = daemonset["spec"]["template"]["spec"]
    everyone = [*spec.get("initContainers", []), *spec["containers"]]
    (found,) = [c for c in everyone if c["name"] == name]
    return dict(found)
