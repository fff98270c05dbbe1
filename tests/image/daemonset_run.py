"""`docker run` arguments that run the image the way deploy/daemonset.yaml runs it.

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
) -> list[str]:
    """Options for `docker run` (before the image name) and, after it, the arguments.

    config_maps: ConfigMap name -> data, for `configMapKeyRef` variables.
    host_paths: volume name -> host path replacing that hostPath volume's path.
    env: variables set or replaced after the DaemonSet's own.
    extra_mounts: host path -> container path, read-only (e.g. a kubeconfig).
    """
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "diskguard"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    opts: list[str] = ["--network=host"]
    if (container.get("securityContext") or {}).get("privileged"):
        opts += PRIVILEGED_ON_THIS_VM
    for mount in container.get("volumeMounts", []):
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
    for var in container.get("env", []):
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


def container_args(daemonset: Mapping[str, Any]) -> list[str]:
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "diskguard"]
    return [*container.get("command", []), *container.get("args", [])]
