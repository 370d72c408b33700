"""The README is the contract with a fresh machine: its commands are the ones CI runs."""

import inspect
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


def layout_entries():
    """The first word of each line of the README's layout tree (the fenced block after
    "## Layout")."""
    return [line.split()[0] for line in commands_after("## Layout") if line.strip()]


def test_the_readme_layout_names_what_is_there_and_all_of_it():
    """The layout tree is the truth about the repository: every path it names exists, every
    top-level module and every code folder is named, and no folder is named twice."""
    entries = layout_entries()
    assert {"paillier.py", "nn.py", "protocol.py", "acml.py", "parties.py"} <= set(entries)
    assert len(entries) == len(set(entries))
    for entry in entries:
        assert (ROOT / entry).exists(), entry
    top_level = {path.name for path in ROOT.glob("*.py")}
    folders = {f"{path.parent.name}/" for path in ROOT.glob("*/__init__.py")}
    assert top_level | folders <= set(entries), sorted((top_level | folders) - set(entries))


def test_every_code_folder_says_its_job_in_one_line():
    """Each folder of machinery opens with a one-line docstring: its purpose, readable from the
    file tree alone."""
    for init in ROOT.glob("*/__init__.py"):
        text = init.read_text().strip()
        assert text.startswith('"""') and text.endswith('"""') and "\n" not in text, init


def leak_names(pattern, text):
    return sorted(set(re.findall(pattern, text)))


def test_every_list_of_the_protocols_own_leaks_names_the_same_leaks():
    """The README's threat model (its bullets and the audit's table), PROTOCOL.md's leaks
    section, the channel report's cumulative lines and the audit's module (the rows it
    builds) list the same leaks, L1 to L5: a leak added to one and not the others fails."""
    from attacks import own_leaks
    import channel
    threat_model = README[README.index("## Threat model and known leaks"):]
    threat_model = threat_model[:threat_model.index("\n## ")]
    table = README[README.index("### The protocol's own leaks"):]
    table = table[:table.index("\n### ")]
    protocol_notes = (ROOT / "PROTOCOL.md").read_text()
    protocol_notes = protocol_notes[protocol_notes.index("## 7. Threat model"):]
    protocol_notes = protocol_notes[:protocol_notes.index("\n## ")]
    expected = [f"L{k}" for k in range(1, 6)]
    assert leak_names(r"\*\*(L\d),", threat_model) == expected
    assert leak_names(r"(?m)^\| (L\d) \|", table) == expected
    assert leak_names(r"(?m)^  (L\d) ", "\n".join(channel.CUMULATIVE_LEAKS)) == expected
    assert leak_names(r"(?m)^\* (L\d) \(", own_leaks.__doc__) == expected
    assert set(expected) <= set(re.findall(r"L\d", protocol_notes))
    auditor = inspect.getsource(own_leaks.OwnLeakAuditor)
    assert leak_names(r'OwnLeak\(\s*"(L\d)"', auditor) == expected  # the rows the audit builds
