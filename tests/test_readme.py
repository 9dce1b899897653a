"""The README's promises stay true: two set-up commands, CI runs the second, the Space config matches."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
APP_COMMAND = "pip install -r requirements.txt -c constraints.txt && python app.py"
TEST_COMMAND = "pip install -r requirements-dev.txt -c constraints.txt && python -m pytest -q"


def front_matter() -> dict[str, str]:
    match = re.match(r"---\n(.*?)\n---\n", README, re.S)
    assert match, "README must start with the Space's YAML front matter"
    return dict(line.split(": ", 1) for line in match.group(1).splitlines() if ": " in line)


def test_quickstart_has_exactly_the_two_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)
    assert blocks == [APP_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()


def _requirements(name: str) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def test_no_release_published_after_the_suite_passed_can_reach_a_fresh_install() -> None:
    """Every direct dependency has an upper bound, and the lock pins a version inside each range."""
    from packaging.requirements import Requirement

    locked = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version
    for file in ("requirements.txt", "requirements-dev.txt"):
        for line in _requirements(file):
            req = Requirement(line)
            assert any(s.operator in ("==", "<=", "<", "~=") for s in req.specifier), f"{file}: {line} has no upper bound"
            name = req.name.lower().replace("_", "-")
            assert name in locked, f"{req.name} is not in constraints.txt"
            assert req.specifier.contains(locked[name]), f"{file}: {line} excludes the locked {locked[name]}"


def test_space_front_matter_matches_the_pinned_gradio() -> None:
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["python_version"].strip('"') == "3.11"
    pins = dict(
        line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line
    )
    assert meta["sdk_version"] == pins["gradio"].split()[0]
    for key in ("title", "emoji", "license"):
        assert meta.get(key), key


def test_results_table_is_filled_from_measurements() -> None:
    assert "RESULTS_TABLE" not in README and "TBD" not in README and "@@" not in README
