"""The Git copy of an export (spec 5.2): one file per object, committed and pushed.

Uses the `git` binary of the runner image (Debian's git): it speaks https, ssh and
file:// with the remote's own auth, needs no extra Python dependency, and its behaviour
on a push race (rejected non-fast-forward) is the one people know.

Layout: `<path>/<namespace>/<kind>/<name>.yaml` (kind in lower case; a custom kind as
`<kind>.<group>`), text from `documents.dump` (sorted keys), so a re-export of unchanged
objects rewrites identical bytes and git sees nothing to commit: no commit, no push.
Each exported namespace's folder is rewritten whole, so a deleted object disappears from
the copy. Secrets never reach this module (the caller leaves them out) and a Secret that
slipped through is refused here as well.

Credentials come from the environment, never the command line: $TONEBRIDGE_DR_GIT_USERNAME
and $TONEBRIDGE_DR_GIT_PASSWORD (an https token, sent as a Basic authorization header via
GIT_CONFIG_* variables) or $TONEBRIDGE_DR_GIT_SSH_KEY (a private key, written 0600 into a
private temporary folder for GIT_SSH_COMMAND; known hosts from
$TONEBRIDGE_DR_GIT_KNOWN_HOSTS, else accept-new).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.engines.kubernetes import documents, kinds

ENV_USERNAME = runner_contract.ENV_GIT_USERNAME
ENV_PASSWORD = runner_contract.ENV_GIT_PASSWORD
ENV_SSH_KEY = runner_contract.ENV_GIT_SSH_KEY
ENV_KNOWN_HOSTS = runner_contract.ENV_GIT_KNOWN_HOSTS
AUTHOR = ("tonebridge-dr", "tonebridge-dr@localhost")
GIT_TIMEOUT = 300.0


@dataclasses.dataclass(frozen=True)
class GitTarget:
    url: str
    branch: str = "main"
    path: str = ""


def file_path(obj: Mapping[str, Any]) -> PurePosixPath:
    """Where `obj` lives in the copy, relative to the target path."""
    group = kinds.group_of(str(obj.get("apiVersion", "")))
    kind = str(obj["kind"]).lower()
    folder = kind if group in _BUILTIN_GROUPS else f"{kind}.{group}"
    meta = obj["metadata"]
    return PurePosixPath(str(meta["namespace"]), folder, f"{meta['name']}.yaml")


_BUILTIN_GROUPS = frozenset(kind.group for kind in kinds.BUILTIN.values())


class _Git:
    def __init__(self, target: GitTarget, scratch: Path, env: Mapping[str, str]) -> None:
        self.target = target
        self.work = scratch / "work"
        self.scratch = scratch
        self.env = self._environment(env)
        self.secrets = [v for k, v in env.items() if k in (ENV_PASSWORD, ENV_SSH_KEY) and v]

    def _environment(self, env: Mapping[str, str]) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("TONEBRIDGE_DR_GIT_")}
        out.update({
            "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": AUTHOR[0],
            "GIT_AUTHOR_EMAIL": AUTHOR[1], "GIT_COMMITTER_NAME": AUTHOR[0],
            "GIT_COMMITTER_EMAIL": AUTHOR[1], "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.scratch),
        })
        password = env.get(ENV_PASSWORD)
        if password:
            user = env.get(ENV_USERNAME) or "git"
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            out.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"})
        key = env.get(ENV_SSH_KEY)
        if key:
            key_file = self.scratch / "ssh-key"
            key_file.write_text(key if key.endswith("\n") else key + "\n")
            key_file.chmod(0o600)
            known = env.get(ENV_KNOWN_HOSTS)
            hosts_option = "-o StrictHostKeyChecking=accept-new"
            if known:
                hosts_file = self.scratch / "known_hosts"
                hosts_file.write_text(known)
                hosts_option = f"-o UserKnownHostsFile={hosts_file} -o StrictHostKeyChecking=yes"
            out["GIT_SSH_COMMAND"] = f"ssh -i {key_file} -o IdentitiesOnly=yes {hosts_option}"
        return out

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd or self.work, env=self.env, capture_output=True,
                text=True, timeout=GIT_TIMEOUT, check=False,
            )
        except FileNotFoundError:
            raise errors.ToolError("git is not installed in the runner image") from None
        except subprocess.TimeoutExpired:
            raise errors.ToolError(f"git {args[0]} did not finish in {GIT_TIMEOUT:.0f} s") from None
        if check and done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit {done.returncode}"
            for secret in self.secrets:
                detail = detail.replace(secret, "***")
            raise errors.ToolError(f"git {args[0]} failed: {detail}")
        return done.stdout


def push(target: GitTarget, objects: Sequence[Mapping[str, Any]], namespaces: Sequence[str],
         backup_id: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Commit `objects` (no Secrets) for `namespaces` and push; the result says whether
    anything changed (`commit` None when not)."""
    if any(obj.get("kind") == "Secret" for obj in objects):
        raise errors.UsageError("refusing to write a Secret to Git")
    scratch = Path(tempfile.mkdtemp(prefix="tonebridge-dr-git-"))
    try:
        git = _Git(target, scratch, os.environ if env is None else env)
        branch_exists = bool(git.run("ls-remote", "--heads", target.url,
                                     f"refs/heads/{target.branch}", cwd=scratch).strip())
        if branch_exists:
            git.run("clone", "--quiet", "--depth", "1", "--branch", target.branch,
                    "--single-branch", target.url, str(git.work), cwd=scratch)
        else:
            git.work.mkdir()
            git.run("init", "--quiet", "--initial-branch", target.branch)
            git.run("remote", "add", "origin", target.url)
        root = git.work / target.path.strip("/") if target.path.strip("/") else git.work
        for namespace in namespaces:
            shutil.rmtree(root / namespace, ignore_errors=True)
        for obj in objects:
            path = root / file_path(obj)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(documents.dump(dict(obj)))
        git.run("add", "--all", "--", str(root.relative_to(git.work) or "."))
        changed = git.run("diff", "--cached", "--name-only").split()
        if not changed:
            return {"url": _public_url(target.url), "branch": target.branch, "commit": None,
                    "changed_files": 0}
        git.run("commit", "--quiet", "-m",
                f"tonebridge-dr backup {backup_id}: {len(objects)} objects of "
                f"{', '.join(namespaces)}")
        commit = git.run("rev-parse", "HEAD").strip()
        git.run("push", "--quiet", "origin", f"HEAD:refs/heads/{target.branch}")
        return {"url": _public_url(target.url), "branch": target.branch, "commit": commit,
                "changed_files": len(changed)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _public_url(url: str) -> str:
    """`url` without a password in it (https://user:token@host/... -> https://user@host/...)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"
