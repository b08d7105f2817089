"""Start one container: a local process in its own private mount namespace.

    unshare --mount --propagation private -- /bin/sh -c '<bind mounts>; exec "$@"' sh ARGV...

Inside the namespace every `Mount` is bind-mounted over its target, so the
container sees e.g. its own termination-message file at /dev/termination-log
and its volumes at their mountPaths, while the host and other containers see
nothing. A bind mount needs an existing target: missing targets are created
once on the host as empty placeholders (an empty file for file sources, an
empty folder for folder sources), e.g. /dev/termination-log and
/var/run/secrets/kubernetes.io/serviceaccount. They stay empty on the host.

Every source is first bound into a private staging tmpfs (at a host folder no
target covers), and only then are the targets mounted from there: a target
may hide where other sources live (an emptyDir at /tmp hides a sandbox state
dir under /tmp, and so the pod's other volumes).

Mounts are made in the given order (shallow first, see `volumes.container_mounts`
and `image.overlay`). A target that an earlier mount hides is created inside that
mount, as container runtimes do for nested mountPaths: an empty folder (or file)
left in that volume, e.g. `<checkout>/.venv` in the emptyDir at /tmp. So read-only
mounts are remounted read-only only once every bind is made.

With `securityContext.runAsUser` / `runAsGroup` the mounts are made as root and
the command is then exec'd through `setpriv` with that uid / gid.

`unshare` without `--fork` execs in place, so the pid we get is the container's
main process and the parent-death signal set before exec survives.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tonebridge_dr.sandbox import procs
from tonebridge_dr.sandbox.node.volumes import Mount

UNSHARE = "unshare"
#: Where sources are staged inside the namespace: the first candidate no target covers.
STAGING_CANDIDATES = (
    "/run/tonebridge-dr-sandbox-staging",
    "/mnt/tonebridge-dr-sandbox-staging",
    "/var/lib/tonebridge-dr-sandbox-staging",
)


class StartError(Exception):
    """The container's process could not be started (the runtime's StartError)."""


@dataclass(frozen=True)
class ContainerLaunch:
    """Everything needed to start one container process."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path
    mounts: Sequence[Mount] = field(default_factory=list)
    user: int | None = None
    group: int | None = None


def ensure_mount_point(mount: Mount) -> None:
    """Create the bind-mount target on the host if missing (see module docstring)."""
    target = Path(mount.target)
    if target.exists() or target.is_symlink():
        if mount.source.is_dir() != target.is_dir():
            kind = "folder" if mount.source.is_dir() else "file"
            raise StartError(f"cannot mount a {kind} at {target}: the host has another type there")
        return
    if mount.source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)


def resolve_command(command: str, env: Mapping[str, str]) -> str:
    """Resolve the first argv element on the container's PATH, as a runtime does."""
    if "/" in command:
        if not os.access(command, os.X_OK):
            raise StartError(f'exec: "{command}": no such file or directory or not executable')
        return command
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise StartError(f'exec: "{command}": executable file not found in $PATH')
    return found


def staging_dir(mounts: Sequence[Mount]) -> str:
    """A host folder no mount target is, or lies above."""
    for candidate in STAGING_CANDIDATES:
        path = PurePosixPath(candidate)
        targets = [PurePosixPath(m.target) for m in mounts]
        if not any(t == path or t in path.parents for t in targets):
            return candidate
    raise StartError("no staging folder for the container's mounts: every candidate is covered")


def namespace_argv(
    mounts: Sequence[Mount],
    argv: Sequence[str],
    user: int | None = None,
    group: int | None = None,
) -> list[str]:
    """The argv that sets up the mount namespace and then execs `argv` (as `user`)."""
    lines = ["set -e"]
    mount_binary = shutil.which("mount") or "/usr/bin/mount"
    umount_binary = shutil.which("umount") or "/usr/bin/umount"
    if mounts:
        staging = shlex.quote(staging_dir(mounts))
        lines.append(f"{mount_binary} -t tmpfs -o mode=0700 tonebridge-dr-staging {staging}")
        for index, mount in enumerate(mounts):
            stage = f"{staging}/{index}"
            lines.append(f"mkdir {stage}" if mount.source.is_dir() else f": > {stage}")
            lines.append(f"{mount_binary} --bind {shlex.quote(str(mount.source))} {stage}")
        for index, mount in enumerate(mounts):
            target = shlex.quote(mount.target)
            if mount.source.is_dir():
                lines.append(f"[ -e {target} ] || mkdir -p {target}")
            else:
                parent = shlex.quote(str(PurePosixPath(mount.target).parent))
                lines.append(f"[ -e {target} ] || {{ mkdir -p {parent} && : > {target}; }}")
            lines.append(f"{mount_binary} --bind {staging}/{index} {target}")
        for mount in mounts:
            if mount.read_only:
                target = shlex.quote(mount.target)
                lines.append(f"{mount_binary} -o remount,bind,ro {target}")
        lines.append(f"{umount_binary} --lazy {staging}")
    if user is None and group is None:
        lines.append('exec "$@"')
    else:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        ids = []
        if user is not None:
            ids.append(f"--reuid={int(user)}")
        ids.append(f"--regid={int(group if group is not None else 0)}")
        lines.append(f'exec {setpriv} {" ".join(ids)} --clear-groups -- "$@"')
    unshare = shutil.which(UNSHARE) or f"/usr/bin/{UNSHARE}"
    script = "\n".join(lines)
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        script,
        "sh",
        *argv,
    ]


def start(launch: ContainerLaunch) -> subprocess.Popen[bytes]:
    """Start the container process (own session, parent-death signal), output
    appended to `launch.log_path`. Raises StartError if it cannot start.

    Call from the thread that will wait for the process: the parent-death signal
    is tied to it.
    """
    if not launch.argv:
        raise StartError("container has no command")
    argv = [resolve_command(launch.argv[0], launch.env), *launch.argv[1:]]
    for mount in launch.mounts:
        ensure_mount_point(mount)
    if launch.mounts:
        Path(staging_dir(launch.mounts)).mkdir(parents=True, exist_ok=True)
    if not launch.cwd.is_dir():
        raise StartError(f"workingDir {launch.cwd} does not exist on the sandbox host")
    with launch.log_path.open("ab") as log_file:
        try:
            return procs.spawn(
                namespace_argv(launch.mounts, argv, launch.user, launch.group),
                env=launch.env,
                cwd=launch.cwd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError as error:
            raise StartError(f"cannot start {argv[0]}: {error}") from error
