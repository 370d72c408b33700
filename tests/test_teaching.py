"""The course material stays true to the repository: what the notebooks, the README and
PROTOCOL.md cite exists, every notebook has exercises with hidden, executed solutions, the
notation table names real code, and PROTOCOL.md's account of the masks is what the code draws."""

import ast
import importlib
import inspect
import pathlib
import re

import nbformat
import numpy as np
import pytest

import protocol
from channel import Channel, MaskSource
from conftest import insecure_keypair
from attacks.flaws import IntervalMaskLabelParty
from parties import DataParty, LabelParty

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROTOCOL = ROOT / "PROTOCOL.md"
CITED_SUFFIXES = (".md", ".py", ".ipynb")


def markdown_of(path):
    if path.suffix == ".ipynb":
        notebook = nbformat.read(path, as_version=4)
        return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    return path.read_text()


def cited_files(text):
    """Every word inside backticks that names a file: ends in .md, .py or .ipynb, or is a path
    under a directory of the repository (``tests/...``, ``notebooks/``)."""
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in span.split():
            word = word.strip(".,;:()")
            if word.endswith(CITED_SUFFIXES) or (
                    "/" in word and (ROOT / word.split("/")[0]).is_dir()):
                yield word


def exists(word, cited_from):
    candidates = [ROOT / word, cited_from.parent / word]
    return any(candidate.exists() for candidate in candidates)


@pytest.mark.parametrize("path", [ROOT / "README.md", PROTOCOL, *NOTEBOOKS],
                         ids=lambda path: path.name)
def test_every_file_cited_in_backticks_exists(path):
    """Protects against citations of files that are not in the repository (like the former
    ACML-PROTOCOL.md): every `*.md`, `*.py`, `*.ipynb` or path-like name must exist."""
    words = set(cited_files(markdown_of(path)))
    missing = sorted(word for word in words if not exists(word, path))
    assert not missing, f"{path.name} cites files that do not exist: {missing}"


def test_the_citation_check_can_fail():
    assert set(cited_files("see `ACML-PROTOCOL.md` and `python acml.py train`")) == {
        "ACML-PROTOCOL.md", "acml.py"}
    assert not exists("ACML-PROTOCOL.md", ROOT / "README.md")


def test_notebooks_and_readme_cite_protocol_md():
    assert PROTOCOL.exists()
    assert "PROTOCOL.md" in (ROOT / "README.md").read_text()
    assert all("PROTOCOL.md" in markdown_of(path) for path in NOTEBOOKS[2:]), \
        "notebooks 03 on lean on the protocol notes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_notebook_has_three_exercises_with_hidden_executed_solutions(path):
    """Each exercise is a markdown cell tagged "exercise" followed by a code cell tagged
    "solution", collapsed (jupyter.source_hidden), that checks its answer with asserts or prints
    it. Outputs are committed, so a solution that was never run has no outputs."""
    cells = nbformat.read(path, as_version=4).cells
    exercises = [i for i, cell in enumerate(cells)
                 if cell.cell_type == "markdown" and "exercise" in cell.metadata.get("tags", [])]
    assert len(exercises) >= 3, f"{path.name}: {len(exercises)} exercises"
    for index in exercises:
        solution = cells[index + 1]
        assert solution.cell_type == "code", (path.name, index)
        assert "solution" in solution.metadata.get("tags", []), (path.name, index)
        assert solution.metadata.get("jupyter", {}).get("source_hidden") is True, (path.name, index)
        assert "assert" in solution.source, (path.name, index)
        assert solution.outputs and not any(o.output_type == "error" for o in solution.outputs), \
            (path.name, index, "the committed solution must have run without error")


def notation_rows():
    text = PROTOCOL.read_text()
    section = text[text.index("## 2. Notation"):text.index("## 3. The steps")]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    return [row for row in rows[1:] if not set(row[0].strip()) <= set("-")]


def instance_attributes(cls):
    """Names a class assigns as self.<name> anywhere in its own source."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(cls))):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name)
                            and leaf.value.id == "self"):
                        names.add(leaf.attr)
    return names


def resolves(dotted):
    module_name, *attributes = dotted.split(".")
    obj = importlib.import_module(module_name)
    for position, attribute in enumerate(attributes):
        if hasattr(obj, attribute):
            obj = getattr(obj, attribute)
        elif inspect.isclass(obj) and position == len(attributes) - 1:
            return attribute in instance_attributes(obj)
        else:
            return False
    return True


def test_notation_table_names_only_code_that_exists():
    """Every name in the "in the code" column of PROTOCOL.md's notation table is a module
    attribute, a class attribute or method, or an attribute the class assigns to self."""
    rows = notation_rows()
    assert len(rows) >= 18
    symbols = {row[0].strip() for row in rows}
    for symbol in ("X", "W", "W_B", "ε_acc", "ε_B", "ε_B'", "ε_A", "z", "δ", "η", "[[·]]", "U",
                   "V", "G'", "T", "α"):
        assert symbol in symbols, symbol
    names = [name for row in rows for name in re.findall(r"`([\w.]+)`", row[2])]
    assert len(names) >= 20
    missing = [name for name in names if not resolves(name)]
    assert not missing, f"PROTOCOL.md's notation table names code that does not exist: {missing}"
    assert not resolves("parties.LabelParty.no_such_share")


class RecordingMasks(MaskSource):
    """The default mask source (random.SystemRandom), keeping every draw: (kind, bits, values)."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def uniform(self, shape, bits, scale):
        mask = super().uniform(shape, bits, scale)
        self.draws.append(("interval", bits, mask))
        return mask

    def residues(self, shape, n, bits, scale=0):
        mask = super().residues(shape, n, bits, scale)
        self.draws.append(("mod n", bits, mask))
        return mask


def test_protocol_md_mask_table_is_what_the_code_draws():
    """PROTOCOL.md, section 5: A's masks (ε_acc at noise_acc_bits, ε_A at gradient_mask_bits(m))
    are uniform on [−2**b, 2**b); B's (ε_B, then ε_B') are residues uniform mod n by default, and
    on the old interval of plan.wide_mask_bits(n) (a third of Z_n at most) with
    flaws.IntervalMaskLabelParty. If the code changes, this fails and the table must be rewritten."""
    keypair = insecure_keypair(256)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), np.arange(16) % 2
    n = keypair[0].n
    for label_class, label_kind in ((LabelParty, "mod n"), (IntervalMaskLabelParty, "interval")):
        data_masks, label_masks = RecordingMasks(), RecordingMasks()
        data_party = DataParty(X, keypair=keypair, init_seed=0, mask_source=data_masks)
        label_party = label_class(y, (4, 3, 1), batch_size=16, seed=0, packing=False,
                                  mask_source=label_masks, allow_insecure=True)
        session = Channel(data_party=data_party, label_party=label_party)
        public = protocol.setup(session)
        protocol.train_batch(session, public, np.arange(16))
        wide = public.mask_bits
        assert wide == keypair[0].max_int.bit_length() - 2      # bits of ⌊(n−1)/3⌋ − 2
        assert 2 ** (wide + 1) <= n // 3
        assert [(kind, bits) for kind, bits, _ in label_masks.draws] == [(label_kind, wide)] * 2
        assert [mask.shape for _, _, mask in label_masks.draws] == [(16, 3), (4, 3)]
        plan = data_party.plan
        assert [(kind, bits) for kind, bits, _ in data_masks.draws] == [
            ("interval", plan.noise_acc_bits()), ("interval", plan.gradient_mask_bits(16))]
        for kind, bits, mask in data_masks.draws + label_masks.draws:
            values = [int(v) for v in np.asarray(mask).ravel()]
            if kind == "mod n":
                assert all(0 <= v < n for v in values)
                assert max(values) >= 2 ** (wide + 1), "residues reach beyond any interval mask"
            else:
                assert all(-2 ** bits <= v < 2 ** bits for v in values), bits
            assert all(isinstance(v, int) for v in values)
