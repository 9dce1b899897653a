"""Upload exactly what the Hugging Face Space needs.

    python -m train.push_space --repo-id USER/SPACE [--dry-run] [--private]

The Space runs ``app.py`` on the shipped weights, so it needs the entry point,
the ``explorer``, ``insight`` and ``resnet`` packages, ``assets/`` and the
README (whose YAML front matter configures the Space) - no tests, no training
code, no data.
``--dry-run`` lists the files and their sizes without touching the network.
Files over 10 MB are stored by the Hub through LFS/Xet; ``upload_folder``
does that on its own.

huggingface_hub is imported lazily: training boxes do not need it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES: tuple[str, ...] = ("explorer", "insight", "resnet")  # what app.py imports, and nothing of train/
ALLOW_PATTERNS: list[str] = [
    "app.py",
    "requirements.txt",
    "README.md",
    # fnmatch: "pkg/**/*.py" alone would miss files directly in pkg/
    *(f"{pkg}/{pattern}" for pkg in PACKAGES for pattern in ("*.py", "**/*.py")),
    "assets/**",
]
IGNORE_PATTERNS: list[str] = ["**/__pycache__/**", "*.pyc", "**/.*", ".*", "*.tmp"]
LARGE_BYTES = 10 * 1024 * 1024


def selected_files(root: Path = ROOT) -> list[tuple[str, int]]:
    """(path relative to root, size in bytes) of every file upload_folder would send.

    Uses huggingface_hub's own pattern filter on the same sorted walk as
    ``HfApi.upload_folder``, so the dry run lists exactly what is uploaded.
    """
    from huggingface_hub.utils import filter_repo_objects

    root = Path(root).resolve()
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    chosen = filter_repo_objects(files.keys(), allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    return [(rel, files[rel].stat().st_size) for rel in chosen]


def problems(root: Path, files: list[tuple[str, int]]) -> list[str]:
    """What would make the Space fail to start, in sentences."""
    names = {rel for rel, _ in files}
    found = []
    required_files = ("app.py", "requirements.txt", *(f"{pkg}/__init__.py" for pkg in PACKAGES),
                      "assets/resnet50_cifar10.safetensors")
    for required in required_files:
        if required not in names:
            found.append(f"{required} is missing: the Space cannot start without it.")
    readme = root / "README.md"
    if "README.md" not in names:
        found.append("README.md is missing: the Space needs its YAML front matter (sdk: gradio, app_file: app.py).")
    elif not readme.read_text(errors="replace").startswith("---"):
        found.append("README.md has no YAML front matter: the Space needs sdk/app_file settings at its top.")
    weights = root / "assets" / "resnet50_cifar10.safetensors"
    if weights.is_file() and weights.read_bytes()[:40].startswith(b"version https://git-lfs"):
        found.append("assets/resnet50_cifar10.safetensors is a Git LFS pointer; run `git lfs pull` first.")
    return found


def report(files: list[tuple[str, int]]) -> str:
    lines = [f"{'size':>12}  file"]
    for rel, size in files:
        flag = "  > 10 MB: stored via LFS/Xet (upload_folder does this automatically)" if size > LARGE_BYTES else ""
        lines.append(f"{size:>12,}  {rel}{flag}")
    total = sum(size for _, size in files)
    large = sum(1 for _, size in files if size > LARGE_BYTES)
    lines.append(f"{len(files)} files, {total / 2**20:.1f} MB in total; {large} over 10 MB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="the Space, as USER/SPACE")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    parser.add_argument("--private", action="store_true", help="create the Space as private if it does not exist")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests point this at a fake tree
    parser.add_argument("--message", default="Update the ResNet-50 CIFAR-10 explorer", help="commit message")
    args = parser.parse_args(argv)

    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        parser.error(f"--repo-id must look like USER/SPACE, got {args.repo_id!r}")
    root = args.root.resolve()
    files = selected_files(root)
    print(f"{'Would upload' if args.dry_run else 'Uploading'} to the Space {args.repo_id} from {root}:")
    print(report(files))
    issues = problems(root, files)
    for issue in issues:
        print(f"PROBLEM: {issue}", file=sys.stderr)
    if args.dry_run:
        print("Dry run: nothing was uploaded.")
        return 1 if issues else 0
    if issues:
        print("Not uploading until the problems above are fixed.", file=sys.stderr)
        return 1

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=args.repo_id,
        repo_type="space",
        folder_path=root,
        allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=IGNORE_PATTERNS,
        commit_message=args.message,
    )
    print(f"Uploaded: {commit}")
    print(f"The Space: https://huggingface.co/spaces/{args.repo_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
