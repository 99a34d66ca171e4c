"""Write the shell completion scripts in completions/ from the CLI itself.

    python scripts/gen-completions.py          # rewrite
    python scripts/gen-completions.py --check  # exit 1 if completions/ is out of date

The scripts ask `stepaudio` for candidates at completion time (Typer's protocol), so
commands and options added later complete without regenerating; tests/test_completions.py
checks both the files and the answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

ROOT = Path(__file__).resolve().parent.parent
FILES = {"bash": "stepaudio.bash", "zsh": "_stepaudio", "fish": "stepaudio.fish"}
COMPLETE_VAR = "_STEPAUDIO_COMPLETE"


def scripts() -> dict[Path, str]:
    return {
        ROOT / "completions" / name: get_completion_script(
            prog_name="stepaudio", complete_var=COMPLETE_VAR, shell=shell
        )
        + "\n"
        for shell, name in FILES.items()
    }


def main() -> int:
    stale = [p for p, text in scripts().items() if not p.is_file() or p.read_text() != text]
    if "--check" in sys.argv:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run python scripts/gen-completions.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in scripts().items():
        p.parent.mkdir(exist_ok=True)
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
