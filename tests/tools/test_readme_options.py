"""The README's tables of options are the command line's own: every option `--help` lists has
its row (and no row names an option that is gone), each row's default is the parser's, the
party options are all named in "Two processes over TCP", and predict's columns are the ones
it writes. A failure says which row to add or fix."""

import contextlib
import io
import pathlib
import re

import numpy as np

from jobs import data
from parties import Prediction
from privacy import input_perturbation
from tools import cli

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()

# Options whose parser default is None and whose README default says what None means; the
# meaning is checked against the code where it is a value.
NONE_MEANS = {"--dataset": data.BUILTIN_DATASETS[0],  # `train` uses german_credit
              "--dp-delta": "10⁻⁵" if input_perturbation.DEFAULT_DELTA == 1e-5 else "?",
              "--init-seed": "secret", "--threshold": "0.5",
              "--positive-class": "the minority class"}
NO_VALUE = {"—", "off", "none"}


def help_text(*command) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.build_parser().parse_args([*command, "--help"])
    return out.getvalue()


def options_of(*command) -> list:
    """The long options `acml.py COMMAND --help` lists (help excluded), in its order."""
    found = re.findall(r"(?m)^  (?:-\w, )?(--[a-z][a-z0-9-]*)", help_text(*command))
    return [name for name in dict.fromkeys(found) if name != "--help"]


def names(option: str, text: str) -> bool:
    """Whether ``text`` names ``option`` as a whole word (not inside a longer option)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def section(heading: str) -> str:
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    return README[start:end if end > 0 else None]


def train_table() -> dict:
    """{option: README default cell} from the table of "## Options of `python acml.py train`"."""
    rows = {}
    for line in section("## Options of `python acml.py train`").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `--") or len(cells) != 4:
            continue
        for name in re.findall(r"--[a-z][a-z0-9-]*", cells[0]):
            rows[name] = cells[3].replace("`", "")
    return rows


def readme_default_is(option: str, cell: str, default) -> bool:
    first = cell.split()[0] if cell.split() else ""
    if isinstance(default, bool):
        return cell == ("off" if default is False else "packing on") or (
            option == "--no-packing" and cell.endswith(" on"))
    if default is None:
        return cell in NO_VALUE or (option in NONE_MEANS and cell.startswith(NONE_MEANS[option]))
    if isinstance(default, tuple):
        return first == ",".join(str(width) for width in default)
    if isinstance(default, (int, float)):
        return first.replace(",", "") == f"{default:g}"
    return first == str(default)


def test_readme_train_table_has_a_row_for_every_option_with_the_parsers_default():
    """Rows missing, rows for options that do not exist, and defaults that differ from
    `--help`'s, each named (`--seed`: the table said 0, the parser 1)."""
    table = train_table()
    listed = options_of("train")
    defaults = vars(cli.build_parser().parse_args(["train"]))
    problems = [f"add a row for {name} to README's train options table"
                for name in listed if name not in table]
    problems += [f"README's train table has a row for {name}, which `train --help` does not list"
                 for name in table if name not in listed]
    for name in listed:
        if name not in table:
            continue
        dest = "packing" if name == "--no-packing" else name[2:].replace("-", "_")
        if not readme_default_is(name, table[name], defaults[dest]):
            problems.append(f"README's train table: {name} default {table[name]!r}, the parser's "
                            f"is {defaults[dest]!r}")
    assert not problems, "\n".join(problems)


def test_readme_names_every_party_option_in_two_processes_over_tcp():
    text = section("## Two processes over TCP")
    missing = [f"party {role}: {name}" for role in ("data", "label")
               for name in options_of("party", role) if not names(name, text)]
    assert not missing, ("README's 'Two processes over TCP' does not name: "
                         + ", ".join(missing))


def test_readme_names_every_predict_option_and_the_columns_predict_writes(capsys):
    text = section("### `python acml.py predict`")
    missing = [name for name in options_of("predict") if not names(name, text)]
    assert not missing, f"README's predict section does not name: {', '.join(missing)}"
    prediction = Prediction(np.array([1]), ["yes"], np.array([0.8]), np.array([0.8]),
                            ["no", "yes"])
    cli.write_predictions(None, "id", ["a"], prediction)
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header == ["id", "predicted_class", "p_no", "p_yes"]
    assert "`id`, `predicted_class` and `p_<class>`" in text, \
        "README's predict section must name the columns `id`, `predicted_class` and `p_<class>`"
