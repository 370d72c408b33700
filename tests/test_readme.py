"""The README is the contract with a fresh machine: its commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()


def fenced_blocks(text):
    return [block.strip().splitlines() for block in re.findall(r"```\n(.*?)```", text, re.S)]


def commands_after(heading_phrase):
    """The fenced block that follows the paragraph containing heading_phrase."""
    start = README.index(heading_phrase)
    return fenced_blocks(README[start:])[0]


def test_readme_sets_up_and_runs_the_main_job_in_two_commands():
    """A fresh machine: one install, one run."""
    assert commands_after("Set up and run the main job") == [
        "pip install -r requirements.txt", "python acml.py train"]


def test_ci_runs_the_readme_test_command_exactly_as_written():
    """.ci/run installs requirements.txt and then calls the README's test command verbatim."""
    install, test_command = commands_after("Set up and run the tests")
    assert install == "pip install -r requirements.txt"
    ci_lines = [line.strip() for line in CI_RUN.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert any("pip install" in line and "-r requirements.txt" in line for line in ci_lines)
    assert ci_lines[-1] == test_command
    installs = [i for i, line in enumerate(ci_lines) if "-r requirements.txt" in line]
    assert installs and installs[0] < len(ci_lines) - 1


def test_every_module_the_readme_layout_names_exists():
    """The layout table names files that are really there."""
    names = re.findall(r"^\| `([\w./]+)` \|", README, re.M)
    assert {"paillier.py", "nn.py", "protocol.py", "acml.py"} <= set(names)
    for name in names:
        assert (ROOT / name).exists(), name
