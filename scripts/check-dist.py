"""Check that a built wheel and sdist carry what the package needs at run time (scripts/check-install.sh).

    python3 scripts/check-dist.py DIST_DIR

Against the source tree and pyproject.toml: every file of the package (the chat template too) is in
the wheel and the sdist; the wheel's entry points are pyproject's (the `stepaudio` command and vLLM's
``vllm.general_plugins`` entry that registers the plugin); the shared data (shell completions) is in
the wheel byte for byte; every extra is declared in its metadata. One line per problem, exit 1.
"""

from __future__ import annotations

import configparser
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_files(package: str) -> list[str]:
    """The package's files in the source tree, as archive paths (no bytecode)."""
    base = ROOT / package
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def check(dist: Path) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel_cfg = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist}: want one wheel and one sdist, found {[p.name for p in wheels + sdists]}"]
    wheel, sdist = wheels[0], sdists[0]
    name, version = wheel.name.split("-")[:2]
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"{name}-{version}.dist-info"
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str  # names are case-sensitive
        entry_points.read_string(zf.read(f"{info}/entry_points.txt").decode())
        metadata = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        data = f"{name}-{version}.data/data/"
        shared = {n.removeprefix(data): zf.read(n) for n in names if n.startswith(data)}
    with tarfile.open(sdist) as tf:
        in_sdist = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}

    source = [f for package in wheel_cfg["packages"] for f in package_files(package)]
    problems += [f"{wheel.name}: lacks {f}" for f in source if f not in names]
    needed_in_sdist = source + ["pyproject.toml", "README.md"] + list(wheel_cfg.get("shared-data", {}))
    problems += [f"{sdist.name}: lacks {f}" for f in needed_in_sdist if f not in in_sdist]

    declared = {"console_scripts": project["project"].get("scripts", {}), **project["project"].get("entry-points", {})}
    for group, entries in declared.items():
        for key, target in entries.items():
            found = entry_points.get(group, key, fallback=None)
            if found is None or found.strip() != target:
                problems.append(f"{wheel.name}: entry point [{group}] {key} is {found!r}, pyproject says {target!r}")

    for src, dest in wheel_cfg.get("shared-data", {}).items():
        if dest not in shared:
            problems.append(f"{wheel.name}: lacks shared data {dest} (from {src})")
        elif shared[dest] != (ROOT / src).read_bytes():
            problems.append(f"{wheel.name}: {dest} differs from {src}")

    extras = set(metadata.get_all("Provides-Extra") or [])
    for extra in project["project"].get("optional-dependencies", {}):
        if extra not in extras:
            problems.append(f"{wheel.name}: metadata lacks the extra [{extra}]")
    return problems


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems = check(Path(sys.argv[1]))
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
