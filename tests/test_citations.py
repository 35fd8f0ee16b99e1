"""What the repository cites must be in the repository (or public): a clone has no sibling
`shared` directory, so a comment or README line pointing there points at nothing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Built from parts so this file does not cite what it looks for.
OUTSIDE = re.compile(rb"\.\./" + rb"shared/|\bshared/(?:LAB|SPEC|ARCHITECTURE)\.md")


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout, no list of tracked files: {exc}")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_cites_files_outside_the_repository() -> None:
    files = tracked_files()
    assert any(path.name == "README.md" for path in files), files
    citing = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if OUTSIDE.search(line):
                citing.append(f"{path.relative_to(ROOT)}:{number}: {line.decode(errors='replace')}")
    assert not citing, "cites files outside the repository:\n" + "\n".join(citing)
