"""The course material stays true to the repository: what the notebooks, the README and
PROTOCOL.md cite exists, every exercise has a task a student attempts first, an answer cell and
a check that never prints the answer, with its solution in notebooks/solutions/, the notation
table names real code, and PROTOCOL.md's account of the masks is what the code draws."""

import ast
import contextlib
import importlib
import inspect
import io
import math
import pathlib
import random
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


EXERCISE_TASK = re.compile(r"\*\*Exercise (\d+) — [^*]+\*\* \*Difficulty (?:★☆☆|★★☆|★★★) · "
                           r"about \d+(?:[–-]\d+)? min(?: · open)?\*")
CHECK_CALL = re.compile(r"\bex(\d\d)\.check_(\d+)\(")
EXERCISES = ROOT / "notebooks" / "exercises"
SOLUTIONS = ROOT / "notebooks" / "solutions"


def tags(cell):
    return cell.metadata.get("tags", [])


def output_text(cell):
    """Everything a code cell's committed outputs show as text (streams, results, errors)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def exercises_of(path):
    """[(K, task cell, the cell after it)] for every markdown cell tagged "exercise"."""
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for index, cell in enumerate(cells):
        if cell.cell_type == "markdown" and "exercise" in tags(cell):
            match = EXERCISE_TASK.match(cell.source)
            number = int(match.group(1)) if match else None
            found.append((number, cell, cells[index + 1] if index + 1 < len(cells) else None))
    return found


def checks_module(number):
    return importlib.import_module(f"notebooks.exercises.ex{number}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_exercise_is_tagged_and_followed_by_an_answer_cell_that_shows_no_answer(path):
    """An exercise is a markdown cell tagged "exercise" that begins with "**Exercise K — title.**
    *Difficulty ★☆☆ · about M min*" (K = 1, 2, ... in order), followed by ONE code cell tagged
    "answer" that calls the notebook's own check, ex<NN>.check_K(...), and whose committed output
    is the check's "no answer yet" line: no ✓, no error, nothing that gives the answer away."""
    from notebooks.exercises import NO_ANSWER
    number = path.name[:2]
    exercises = exercises_of(path)
    assert len(exercises) >= 3, f"{path.name}: {len(exercises)} exercises"
    numbers = [k for k, _, _ in exercises]
    assert None not in numbers, f"{path.name}: an exercise lacks the '**Exercise K — title.** " \
                                f"*Difficulty ★☆☆ · about M min*' heading"
    assert numbers == list(range(1, len(numbers) + 1)), (path.name, numbers)
    for k, task, answer in exercises:
        assert answer is not None and answer.cell_type == "code" and "answer" in tags(answer), \
            (path.name, k, "the cell after the task must be a code cell tagged 'answer'")
        calls = CHECK_CALL.findall(answer.source)
        assert calls == [(number, str(k))], (path.name, k, calls)
        shown = output_text(answer)
        assert "✓" not in shown, (path.name, k, "the committed answer cell shows a right answer")
        assert NO_ANSWER in shown, (path.name, k, "the committed answer cell must show 'no answer yet'")
        assert not any(o.output_type == "error" for o in answer.get("outputs", [])), (path.name, k)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_no_solution_is_left_in_a_student_notebook(path):
    """The solutions live in notebooks/solutions/: no cell of a student notebook is tagged
    "solution" or hidden, and none is marked as a solution."""
    for cell in nbformat.read(path, as_version=4).cells:
        assert "solution" not in tags(cell), path.name
        assert not cell.metadata.get("jupyter", {}).get("source_hidden"), path.name
        assert "# SOLUTION" not in cell.source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_check_an_answer_cell_calls_exists(path):
    """Each ex<NN>.check_K called by an answer cell is a function of notebooks/exercises/exNN.py."""
    module = checks_module(path.name[:2])
    for k, _, answer in exercises_of(path):
        assert callable(getattr(module, f"check_{k}", None)), f"{module.__name__}.check_{k} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_the_solutions_notebook_solves_and_checks_every_exercise(path):
    """notebooks/solutions/<same name>.ipynb has, for every exercise K, a heading "## Exercise K"
    and code that ends in `assert exNN.check_K(`; its committed outputs show every check's ✓ and
    no error (CI executes it too, so a wrong solution fails there)."""
    solutions = SOLUTIONS / path.name
    assert solutions.exists(), f"{path.name}: no {solutions.relative_to(ROOT)}"
    cells = nbformat.read(solutions, as_version=4).cells
    headings = {cell.source.strip().splitlines()[0] for cell in cells
                if cell.cell_type == "markdown" and cell.source.strip()}
    code = [cell for cell in cells if cell.cell_type == "code"]
    number = path.name[:2]
    for k, _, _ in exercises_of(path):
        assert f"## Exercise {k}" in headings, (solutions.name, k)
        asserting = [cell for cell in code if f"assert ex{number}.check_{k}(" in cell.source]
        assert asserting, (solutions.name, k, f"no `assert ex{number}.check_{k}(`")
        assert all("✓" in output_text(cell) for cell in asserting), (solutions.name, k, "not run")
    assert not any(o.output_type == "error" for cell in code for o in cell.get("outputs", []))


def check_functions():
    for module_path in sorted(EXERCISES.glob("ex[0-9][0-9].py")):
        module = checks_module(module_path.stem[2:])
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if re.fullmatch(r"check_\d+", name) and function.__module__ == module.__name__:
                yield module_path.stem, name, function


@pytest.mark.parametrize("module_name, name, function", list(check_functions()),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_a_check_without_an_answer_says_so_and_does_not_raise(module_name, name, function, capsys):
    """The student notebooks run top to bottom in CI with every answer still None: each check
    then prints "no answer yet" and returns False (its other arguments are not needed for that)."""
    from notebooks.exercises import NO_ANSWER
    parameters = inspect.signature(function).parameters.values()
    positional = [None for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name: None for p in parameters if p.default is p.empty and p.kind == p.KEYWORD_ONLY}
    assert function(*positional, **keywords) is False, (module_name, name)
    assert NO_ANSWER in capsys.readouterr().out, (module_name, name)


def verdict_of(check, *args, **kwargs):
    """(what the check returned, what it printed)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = check(*args, **kwargs)
    return result, buffer.getvalue()


def paillier_by_hand(p, q, m, r):
    n = p * q
    lam = math.lcm(p - 1, q - 1)
    mu = pow((pow(n + 1, lam, n * n) - 1) // n, -1, n)
    c = pow(n + 1, m, n * n) * pow(r, n, n * n) % (n * n)
    return {"n": n, "n_squared": n * n, "lambda": lam, "mu": mu, "g": n + 1, "r": r, "m": m,
            "c": c, "decrypted": (pow(c, lam, n * n) - 1) // n * mu % n}


def test_checks_of_notebooks_01_to_04_tell_right_from_wrong_and_never_print_the_expected_value():
    """For the checks whose expected value is a number: the right answer gets ✓, a wrong one ✗,
    and neither output contains the expected value (the check must not give the answer away)."""
    ex01, ex04 = checks_module("01"), checks_module("04")
    right = paillier_by_hand(11, 13, 42, 23)
    for answer, expected in ((right, True), ({**right, "lambda": 120}, False),
                             ({**right, "mu": right["mu"] + 1}, False),
                             (paillier_by_hand(11, 13, 42, 22), False)):   # r not in Z*_n
        result, printed = verdict_of(ex01.check_1, answer)
        assert result is expected, (answer, printed)
        assert "60" not in printed and str(right["mu"]) not in printed, printed
    schoolbook, karatsuba = 4.0, 2.0 ** math.log2(3)
    for answer, measured, expected in (((4, 3, "Karatsuba"), 3.2, True), ((4, 3, "schoolbook"), 3.2, False),
                                       ((4, 2.5, "Karatsuba"), 3.2, False)):
        result, printed = verdict_of(ex01.check_2, answer, measured_speedup=measured)
        assert result is expected, (answer, printed)
        assert repr(schoolbook) not in printed and f"{karatsuba:.1f}" not in printed, printed
    for answer, expected in (((94, 72, 21), True), ((93, 72, 21), False), ((94, 56, 21), False),
                             ((94, 72, 22), False)):
        result, printed = verdict_of(ex01.check_4, answer)
        assert result is expected, (answer, printed)
        assert not {"94", "72", "21"} & set(re.findall(r"\d+", printed)), printed
    exact = 1 - (1 - 100 / 2 ** 12) ** 64
    for answer, expected in (((0.0244, 0.79, exact), True), ((0.0244, 0.79, min(1.0, 64 * 100 / 2 ** 12)), False),
                             ((0.0625, 0.79, exact), False)):
        result, printed = verdict_of(ex04.check_2, answer)
        assert result is expected, (answer, printed)
        assert f"{exact:.3f}" not in printed and f"{100 / 2 ** 12:.4f}" not in printed, printed
    result, printed = verdict_of(ex04.check_3, (4, 6))
    assert result is False and not {"5", "6"} & set(re.findall(r"\d+", printed)), printed


def test_the_share_update_check_fails_a_label_party_that_uses_the_data_partys_mask():
    """ex02.check_1 accepts the protocol's update and rejects one where the label party's new
    share reads ε_A itself (which it never sees) even though the two shares still add up."""
    ex02 = checks_module("02")

    def protocol_update(W_B, epsilon, masked_gradient, epsilon_A, lr):
        return W_B - lr * masked_gradient, epsilon + lr * epsilon_A

    def peeking_update(W_B, epsilon, masked_gradient, epsilon_A, lr):
        return W_B - lr * (masked_gradient - epsilon_A), epsilon

    assert verdict_of(ex02.check_1, protocol_update)[0] is True
    assert verdict_of(ex02.check_1, peeking_update)[0] is False


def test_the_mitigation_check_fails_when_nothing_is_mitigated():
    """ex06.check_4 measures the label attack on the mitigated view: sending δ·Wᵀ unchanged must
    fail (the attack separates the labels), and so must sending pure noise (no utility left)."""
    ex06 = checks_module("06")
    assert verdict_of(ex06.check_4, lambda gradient: gradient)[0] is False
    noise = random.SystemRandom()
    drown = lambda gradient: np.array([[noise.gauss(0.0, 1e6) for _ in row] for row in gradient])
    assert verdict_of(ex06.check_4, drown)[0] is False


def test_readme_exactness_quotes_the_default_fractional_bits():
    """The README's "Exactness" paragraph names the plan's default scales: X, δ, η and W."""
    from plan import FixedPointPlan
    plan = FixedPointPlan()
    text = " ".join((ROOT / "README.md").read_text().split())
    match = re.search(r"X at (\d+) fractional bits, δ at (\d+), η at (\d+), and W at their sum \((\d+)\)",
                      text)
    assert match, "the Exactness paragraph no longer states the scales"
    assert tuple(map(int, match.groups())) == (plan.x_frac_bits, plan.delta_frac_bits,
                                               plan.lr_frac_bits, plan.w_frac_bits)


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
