"""Where things live: the repo, the reports, the model cache, the bundled packages."""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repo (src/helpers/paths.py -> repo)
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"
REPORTS = Path(os.environ.get("TUNEBOOK_REPORTS", ROOT / "reports"))
# Converted base models and derived data live here; delete it to rebuild.
CACHE = Path(os.environ.get("TUNEBOOK_CACHE", ROOT / ".cache"))
DATA = ROOT / "data"


def package_file(dist: str, relative: str) -> Path:
    """A file inside an installed distribution, found without importing it."""
    try:
        path = Path(metadata.distribution(dist).locate_file(relative))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the package {dist!r} is not installed; run `make env` (it installs the bundled "
            f"models and data with --no-deps)"
        ) from None
    if not path.exists():
        raise FileNotFoundError(f"{relative} is missing from the installed package {dist!r}: reinstall it")
    return path
