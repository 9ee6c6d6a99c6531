"""The README's promises: two set-up commands, CI runs the test one verbatim, the config table is current."""

import re
from pathlib import Path

from lift_ray.config import reference_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _setup_commands():
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [[line for line in b.splitlines() if line.strip() and not line.startswith("#")] for b in blocks]


def test_exactly_two_one_line_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2 and all(len(c) == 1 for c in commands)
    demo, tests = commands[0][0], commands[1][0]
    assert "lift_ray.demo" in demo and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert _setup_commands()[1][0] in ci.splitlines()


def test_config_reference_is_current():
    section = README.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert section == reference_markdown()
