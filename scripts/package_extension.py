"""Zip the browser extension for the Chrome Web Store / Edge Add-ons.

    .venv/bin/python scripts/package_extension.py            # -> extension/dist/robust-scanner-extension-<version>.zip

Takes what the browser loads from ``extension/`` and leaves out the lint tooling (package.json, lock file, ESLint
config), node_modules, dist and tests.  The version is the manifest's.  The archive is reproducible: entries are
sorted and carry a fixed timestamp.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "extension"
EXCLUDED_DIRS = {"node_modules", "dist", "tests", ".git"}
EXCLUDED_FILES = {"package.json", "package-lock.json", "eslint.config.js", ".gitignore", ".eslintrc.json"}
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def extension_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if path.is_file() and relative.name not in EXCLUDED_FILES and not relative.name.startswith("."):
            files.append(path)
    return files


def package(root: Path = EXTENSION, out_dir: Path | None = None) -> Path:
    manifest = json.loads((root / "manifest.json").read_text())
    version = manifest["version"]
    out_dir = out_dir or root / "dist"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"robust-scanner-extension-{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in extension_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extension", type=Path, default=EXTENSION, help="the extension folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <extension>/dist)")
    args = parser.parse_args(argv)
    target = package(args.extension, args.out)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    print(f"{target} ({len(names)} files, {target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
