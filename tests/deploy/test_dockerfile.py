"""The image (Dockerfile) installs every external program the runner runs.

The programs are found in the runner's source, not listed by hand: the first argument
of `tool("pg_dump", ...)` / `shutil.which(...)`, a module constant named *BINARY* or
*_TOOL*, the default of a parameter that names a program (`binary`, `check_tool`,
`redis_server`), and the fallback of one of our override variables,
`os.environ.get(GPG_ENV) or "gpg"`. Each must be in the Dockerfile's final check (the
RUN that fails the build when a program is missing), and the Debian package that
provides it must be installed, for every supported PostgreSQL major. No Docker
needed: `make image` builds the image, and that check runs there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.fixtures import ROOT

DOCKERFILE = ROOT / "Dockerfile"
RUNNER = ROOT / "operator" / "tonebridge_dr" / "runner"

#: PostgreSQL majors the image must carry: the ones the PostgreSQL project supports.
SUPPORTED_MAJORS = (14, 15, 16, 17, 18)
#: Programs of PostgreSQL's client package and of its server package (Debian layout,
#: /usr/lib/postgresql/<major>/bin).
PG_CLIENT = frozenset({"pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_basebackup",
                       "pg_receivewal", "pg_isready"})
PG_SERVER = frozenset({"initdb", "pg_ctl", "postgres", "pg_controldata", "pg_waldump",
                       "pg_resetwal"})
#: Debian package of every other program.
PACKAGE_OF = {
    "redis-server": "redis-server",
    "redis-check-rdb": "redis-tools",
    "redis-cli": "redis-tools",
    "gpg": "gnupg",
    "zstd": "zstd",
    "git": "git",
}
#: Found in the runner today; the discovery below must find at least these (so that a
#: refactor that hides them from it fails here instead of passing with nothing found).
KNOWN = frozenset({"pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_basebackup",
                   "pg_receivewal", "pg_controldata", "pg_ctl", "initdb", "redis-server",
                   "redis-check-rdb", "gpg"})

_PROGRAM = re.compile(r"^[a-z][a-z0-9_-]*$")
_PROGRAM_PARAMETERS = frozenset({"binary", "check_tool", "redis_server"})


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _text(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value if _PROGRAM.match(node.value) else None
    return None


def _is_override(node: ast.expr) -> bool:
    """`os.environ.get(SOME_ENV)` / `os.environ.get("TONEBRIDGE_DR_...")`: one of our
    variables that overrides a program (not AWS_REGION and the like)."""
    if not (isinstance(node, ast.Call) and _name(node.func) == "get" and node.args
            and isinstance(node.func, ast.Attribute) and _name(node.func.value) == "environ"):
        return False
    key = node.args[0]
    if isinstance(key, ast.Constant):
        return str(key.value).startswith("TONEBRIDGE_DR_")
    return _name(key).endswith("_ENV")


def programs_in(source: str) -> set[str]:
    """Programs a module runs or probes (see the module docstring)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        candidates: list[ast.expr | None] = []
        if isinstance(node, ast.Call) and _name(node.func) in ("tool", "which") and node.args:
            candidates.append(node.args[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(re.search(r"BINARY|_TOOL$", _name(t)) for t in targets):
                candidates.append(node.value)
        elif isinstance(node, ast.FunctionDef):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            defaults = list(zip(positional[len(positional) - len(arguments.defaults):],
                                arguments.defaults, strict=True))
            defaults += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults,
                                                strict=True) if d is not None]
            candidates += [d for a, d in defaults if a.arg in _PROGRAM_PARAMETERS]
        elif (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)
              and any(_is_override(v) for v in node.values[:-1])):
            candidates.append(node.values[-1])
        found.update(t for t in map(_text, candidates) if t)
    return found


def runner_programs() -> set[str]:
    found: set[str] = set()
    for path in sorted(RUNNER.rglob("*.py")):
        found |= programs_in(path.read_text())
    return found


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def pg_majors(text: str) -> list[int]:
    match = re.search(r'^ARG PG_MAJORS="([0-9 ]+)"$', text, re.MULTILINE)
    assert match, "Dockerfile: ARG PG_MAJORS=\"...\" not found"
    return [int(m) for m in match.group(1).split()]


def checked_programs(text: str) -> tuple[set[str], set[str]]:
    """(programs checked in /usr/lib/postgresql/<major>/bin, programs checked on PATH) by
    the Dockerfile's last RUN."""
    loops = re.findall(r"for tool in ([^;]+);", text.replace("\\\n", " "))
    assert len(loops) == 2, f"Dockerfile: expected the two `for tool in` checks, got {loops}"
    return set(loops[0].split()), set(loops[1].split())


def installed_packages(text: str) -> set[str]:
    """Debian packages the Dockerfile installs, with ${major} expanded."""
    flat = text.replace("\\\n", " ")
    listed = re.search(r'packages="([^"$]+)"', flat)
    assert listed, 'Dockerfile: packages="..." not found'
    packages = set(listed.group(1).split())
    per_major = re.search(r'packages="\$packages ([^"]+)"', flat)
    assert per_major, 'Dockerfile: the per-major packages="$packages ..." not found'
    for major in pg_majors(text):
        packages |= {p.replace("${major}", str(major)) for p in per_major.group(1).split()}
    return packages


def test_discovery_finds_the_known_programs() -> None:
    found = runner_programs()
    assert found >= KNOWN, f"not found in the runner any more: {sorted(KNOWN - found)}"


def test_discovery_reads_each_form() -> None:
    source = '''
import os, shutil
DEFAULT_BINARY = "redis-server"
def f(check_tool: str | None = "redis-check-rdb", *, binary="valkey-server"):
    tools.tool("pg_dump", 15)
    target.tool("psql")
    shutil.which("pigz")
    region = os.environ.get("AWS_REGION") or "us-east-1"
    return os.environ.get(GPG_ENV) or "gpg"
def g(name="not-a-program"):
    return "echo"
'''
    assert programs_in(source) == {"redis-server", "redis-check-rdb", "valkey-server",
                                   "pg_dump", "psql", "pigz", "gpg"}


def test_every_runner_program_is_checked_by_the_image_build() -> None:
    in_pg_bin, on_path = checked_programs(_dockerfile())
    missing = sorted(p for p in runner_programs()
                     if p not in (in_pg_bin if p in PG_CLIENT | PG_SERVER else on_path))
    assert not missing, (f"the runner runs {missing}: add them to the Dockerfile's install "
                         "and to its final check")


def test_every_checked_program_is_installed_for_every_supported_major() -> None:
    text = _dockerfile()
    majors = pg_majors(text)
    assert set(SUPPORTED_MAJORS) <= set(majors), f"PG_MAJORS {majors} lacks a supported major"
    packages = installed_packages(text)
    in_pg_bin, on_path = checked_programs(text)
    for program in sorted(in_pg_bin):
        assert program in PG_CLIENT | PG_SERVER, f"{program}: which PostgreSQL package?"
        kind = "client-" if program in PG_CLIENT else ""
        for major in majors:
            # the server package depends on the client package of its major
            assert f"postgresql-{kind}{major}" in packages or (
                kind and f"postgresql-{major}" in packages), (program, major)
    for program in sorted(on_path - {"tonebridge-dr", "tonebridge-dr-walfast"}):
        assert program in PACKAGE_OF, f"{program}: add its Debian package to PACKAGE_OF"
        assert PACKAGE_OF[program] in packages, f"{program}: {PACKAGE_OF[program]} not installed"


def test_image_runs_the_operator_as_a_numeric_non_root_user() -> None:
    text = _dockerfile()
    user = re.findall(r"^USER (\d+)(?::(\d+))?$", text, re.MULTILINE)
    assert user and int(user[-1][0]) != 0, "the chart's runAsNonRoot needs a numeric USER"
    assert re.search(r'^ENTRYPOINT \["tonebridge-dr"\]$', text, re.MULTILINE)
    assert "image:" in (ROOT / "Makefile").read_text() and Path(DOCKERFILE).is_file()


def test_the_image_builds_the_compiled_front_door_where_restore_looks_for_it() -> None:
    text = _dockerfile()
    assert re.search(r"cc .*-o /opt/tonebridge-dr/bin/tonebridge-dr-walfast", text)
    assert "operator/tonebridge_dr/runner/engines/postgres/wal/walfast.c" in text
    _, on_path = checked_programs(text)
    assert "tonebridge-dr-walfast" in on_path  # the final check fails a build without it
