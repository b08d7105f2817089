"""The sandbox's stand-in for a container image: the venv the node agent runs in and
the folders that venv points at, seen by every container at their host paths.

A real image lives in the container's root filesystem, under its volumes. Here the
"image" is part of the host's filesystem, so a volume can hide it: the runner pods'
emptyDir at /tmp hides a checkout under /tmp, a volume at /home hides one under /home,
and `exec <checkout>/.venv/bin/tonebridge-dr` then fails with "not found". So every
image folder that a container's mount would hide is bind-mounted back, read-only, on
top of that mount (`overlay`), at its own path: volumes mounted deeper inside the image
still show, since mounts are made shallow first.

The image folders (`paths`) are the venv (`sys.prefix`), the Python installation it was
made from (`sys.base_prefix`), every folder a `.pth` file of the venv's site-packages
adds (an editable install: the checkout's package folder), and the folder
`tonebridge_dr` is imported from. Each at its path as given and, if different, as
resolved: a shebang names the first, the kernel follows the second.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import tonebridge_dr
from tonebridge_dr.sandbox.node.volumes import Mount


def pth_paths(site_dir: Path, text: str) -> list[Path]:
    """The folders a `.pth` file in `site_dir` names, as `site.addpackage` reads it:
    one per line, relative to `site_dir`; blank lines, comments and `import` lines skipped.
    Only folders that exist."""
    paths = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
            continue
        path = Path(os.path.normpath(site_dir / line))
        if path.is_dir():
            paths.append(path)
    return paths


def _with_resolved(paths: Iterable[Path]) -> list[Path]:
    """Absolute, normalised, each followed by its resolved form when that differs;
    duplicates dropped, order kept."""
    seen: dict[Path, None] = {}
    for path in paths:
        given = Path(os.path.normpath(os.path.abspath(path)))
        seen.setdefault(given, None)
        seen.setdefault(given.resolve(), None)
    return list(seen)


def paths() -> tuple[Path, ...]:
    """The image folders of the running interpreter (see the module docstring)."""
    found = [Path(sys.prefix), Path(sys.base_prefix)]
    for site_dir in map(Path, site.getsitepackages([sys.prefix])):
        if not site_dir.is_dir():
            continue
        found.append(site_dir)
        for pth in sorted(site_dir.glob("*.pth")):
            try:
                found.extend(pth_paths(site_dir, pth.read_text(errors="replace")))
            except OSError:
                continue
    package = Path(tonebridge_dr.__file__).parent
    found.append(package.parent)
    return tuple(_with_resolved(found))


def _covers(target: str, path: PurePosixPath) -> bool:
    mount_point = PurePosixPath(target)
    return mount_point == path or mount_point in path.parents


def _depth(mount: Mount) -> int:
    return len(PurePosixPath(mount.target).parts)


def overlay(mounts: Sequence[Mount], image: Sequence[Path]) -> list[Mount]:
    """`mounts` plus a read-only bind of each image folder a mount would hide, in the
    order to mount them: shallow first, an image folder after a volume at the same
    depth (it wins), otherwise in the given order.

    An image folder is hidden when the deepest mount at or above it is a volume; below
    one of the image's own binds (at or above it) it is visible again, and needs none.
    """
    chosen: list[Mount] = []
    for path in sorted(
        (PurePosixPath(os.path.normpath(p)) for p in image), key=lambda p: len(p.parts)
    ):
        covering = [(_depth(m), False) for m in mounts if _covers(m.target, path)]
        covering += [(_depth(m), True) for m in chosen if _covers(m.target, path)]
        if covering and not max(covering)[1]:
            chosen.append(Mount(Path(path), str(path), read_only=True))
    return sorted([*mounts, *chosen], key=_depth)
