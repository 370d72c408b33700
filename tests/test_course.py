"""The course page and the numbers the notebooks quote stay true: every reference of COURSE.md
is a link, every notebook is listed with its times, the README links its notebooks and its two
companion pages, and a README figure a notebook quotes is the figure the README holds."""

import pathlib
import re

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COURSE = (ROOT / "COURSE.md").read_text()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LINK = re.compile(r"\[[^\]]+\]\((https?://[^)\s]+|[^)\s]+)\)")


def section(text, heading):
    """The text under a '## heading', up to the next '## '."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def unlinked_references(references):
    """The items of a bulleted reference list that carry no link at all, and the issue or pull
    numbers (#1234) anywhere in it that are not the text of a link to that very thread."""
    items = [item for item in re.split(r"\n\* ", "\n" + references.split("\n", 1)[1]) if item.strip()]
    problems = [item.strip()[:60] for item in items if not LINK.search(item)]
    linked_numbers = {number for number, target in re.findall(r"\[#(\d+)[^\]]*\]\((https?://[^)]+)\)", references)
                      if target.rstrip("/").endswith(f"/{number}")}
    problems += [f"#{number}" for number in re.findall(r"#(\d{2,})", references) if number not in linked_numbers]
    return problems


def test_every_reference_of_the_course_is_a_link():
    """Protects the reference list a lecturer hands out: each entry links to its source (a DOI,
    an arXiv page, the project), and a thread cited by number links to that thread."""
    references = section(COURSE, "References")
    assert references.count("\n* ") >= 8
    assert unlinked_references(references) == []
    for required in ("https://arxiv.org/abs/2007.06849", "https://doi.org/10.1007/3-540-48910-X_16",
                     "https://doi.org/10.1007/3-540-44586-2_9", "https://doi.org/10.1007/s10207-010-0119-9",
                     "https://www.cis.upenn.edu/~aaroth/Papers/privacybook.pdf", "https://arxiv.org/abs/1805.06530",
                     "https://github.com/FederatedAI/FATE",
                     "https://github.com/alibaba/Elastic-Federated-Learning-Solution"):
        assert f"]({required})" in references, required


def test_the_reference_check_can_fail():
    """The check above is not vacuous: an entry without a link, and a thread number whose link
    points elsewhere, are both reported."""
    broken = ("## References\n\n* A book with no link.\n"
              "* [#12, a thread](https://github.com/o/r/issues/13).\n* [fine](https://example.org)\n")
    assert unlinked_references(broken) == ["A book with no link.", "#12"]


def test_the_course_lists_every_notebook_with_its_reading_and_compute_time():
    """Each notebook is in COURSE.md's table as a link to a file that exists, with a reading time
    and a measured compute time (no placeholder left), and every file linked from the course
    exists."""
    table = [line for line in section(COURSE, "The notebooks").splitlines() if line.startswith("| [")]
    listed = {re.search(r"\]\(([^)]+)\)", line).group(1): line for line in table}
    assert set(listed) == {f"notebooks/{path.name}" for path in NOTEBOOKS}
    for path, line in listed.items():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert re.fullmatch(r"\d+ min", cells[1]), line
        assert re.fullmatch(r"\d+ s", cells[2]), line
    for target in re.findall(r"\]\(([^)#\s]+)\)", COURSE):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_readme_links_its_notebooks_and_its_companion_pages_near_the_top():
    """A reader finds PROTOCOL.md and COURSE.md before the first technical section, and every
    notebook of the README's table is a link to the file."""
    top = README[:README.index("## The four steps")]
    assert "](PROTOCOL.md)" in top and "](COURSE.md)" in top
    notebooks_section = section(README, "Notebooks")
    for path in NOTEBOOKS:
        name = f"notebooks/{path.name}"
        assert f"[`{name}`]({name})" in notebooks_section, name


def printed_lines(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            yield from output.get("text", "").splitlines()


def readme_row_value(row_start):
    """The last column's first number (with ×) of the README table row that starts so."""
    row = next(line for line in README.splitlines() if line.startswith(row_start))
    return re.search(r"[\d.]+×", row.split("|")[-2]).group()


QUOTED_README_FIGURES = [
    ("05_cost.ipynb", "| 2 workers vs 1",
     "README, Performance, latest run: a packed epoch on 2 workers vs 1 process: "),
    ("08_against_the_systems_it_replaces.ipynb", "| per sample vs phe, 2 workers",
     "README, Performance, latest run at 2048 bits: per sample vs phe, 2 workers: "),
]


@pytest.mark.parametrize("notebook, row_start, printed", QUOTED_README_FIGURES,
                         ids=[name for name, _, _ in QUOTED_README_FIGURES])
def test_a_readme_figure_a_notebook_quotes_is_read_from_the_readme_and_agrees(notebook, row_start, printed):
    """Protects against prose that contradicts the README (a notebook once quoted 1.9× on two
    workers where the README said 1.34×): the notebook reads the figure from the README's own
    row in code, and the figure its committed output prints is the one the README holds now."""
    path = ROOT / "notebooks" / notebook
    source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    assert '"README.md"' in source and f'line.startswith("{row_start}' in source
    quoted = [line[len(printed):] for line in printed_lines(path) if line.startswith(printed)]
    assert quoted == [readme_row_value(row_start)]


def curve_rows_of_the_readme():
    rows = {}
    for line in section(README, "Known flaws and the audit").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ("german_credit", "breast_cancer"):
            epsilon = "inf" if cells[1] == "∞" else cells[1]
            rows[(cells[0], epsilon)] = (cells[2], cells[6], cells[7])
    return rows


def test_the_privacy_curve_notebook_06_prints_is_the_readme_table():
    """Notebook 06 draws input perturbation's privacy/utility curve from the same fixed noise
    seed as the README's table: for every dataset and ε, its σ, accuracy and AUC are the
    README's, digit for digit."""
    readme = curve_rows_of_the_readme()
    assert len(readme) == 18
    printed = {}
    pattern = re.compile(r"^(\w+)\s+ε = (\S+)\s+σ =\s+(\S+)\s+attack R²\s+\S+\s+accuracy (\S+)\s+AUC (\S+)")
    for line in printed_lines(ROOT / "notebooks" / "06_the_protocols_own_leaks.ipynb"):
        match = pattern.match(line)
        if match:
            name, epsilon, sigma, accuracy, auc = match.groups()
            printed[(name, epsilon)] = (sigma, accuracy, auc)
    assert printed == readme
