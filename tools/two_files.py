"""Real tables as two organisations hold them, and a measure of how `train` does on them.

``split``: one of dmba's raw tables (FlightDelays, eBayAuctions, Taxi-cancellation-case) becomes
a features file (an ``id`` column and every column but the label, untouched: text, blanks and
dates as they come) and a labels file (``id`` and the label), the labels' rows shuffled, 30 ids
only in the features file and 25 only in the labels file — what two organisations would export.

``measure``: runs ``python acml.py train`` on such a pair with the given options (as a user
would, reading its --json), and scikit-learn's LogisticRegression on the very same training and
test rows (the same preparation, split and standardisation), and prints one Markdown table row:
accuracy, balanced accuracy, ROC AUC, the minority class caught, wall time.

    python tools/two_files.py split FlightDelays /tmp/flights
    python tools/two_files.py measure FlightDelays /tmp/flights -- --categorical CARRIER ...

The shuffles are seeded (numpy's generator is fine here: nothing secret is drawn).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

# table -> (label column, id prefix)
TABLES = {"FlightDelays": ("Flight Status", "FL"),
          "eBayAuctions": ("Competitive?", "EB"),
          "Taxi-cancellation-case": ("Car_Cancellation", "TX")}
ONLY_IN_FEATURES = 30
ONLY_IN_LABELS = 25


def dmba_table(name: str) -> Path:
    spec = importlib.util.find_spec("dmba")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the dmba package is not installed (pip install dmba)")
    return Path(list(spec.submodule_search_locations)[0]) / "csvFiles" / f"{name}.csv.gz"


def split(name: str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(features.csv, labels.csv) of dmba's table ``name`` in ``folder``."""
    label_column, prefix = TABLES[name]
    with gzip.open(dmba_table(name), "rt", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header, rows = rows[0], [row for row in rows[1:] if row]
    label_index = header.index(label_column)
    width = len(str(len(rows) + ONLY_IN_LABELS))
    ids = [f"{prefix}{row:0{width}d}" for row in range(len(rows))]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    features, labels = folder / "features.csv", folder / "labels.csv"
    with open(features, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id"] + [h for i, h in enumerate(header) if i != label_index])
        for row_id, row in zip(ids, rows):
            writer.writerow([row_id] + [cell for i, cell in enumerate(row) if i != label_index])
    unlabeled = set(rng.choice(len(rows), ONLY_IN_FEATURES, replace=False).tolist())
    label_rows = [(ids[row], rows[row][label_index]) for row in range(len(rows))
                  if row not in unlabeled]
    classes = sorted({label for _, label in label_rows})
    label_rows += [(f"{prefix}{len(rows) + extra:0{width}d}", classes[extra % len(classes)])
                   for extra in range(ONLY_IN_LABELS)]  # labelled ids the data party lacks
    order = rng.permutation(len(label_rows))
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", label_column])
        for index in order:
            writer.writerow(label_rows[index])
    return features, labels


def logistic_baseline(folder: Path, label_column: str, options: list) -> dict:
    """scikit-learn's LogisticRegression on the rows and features `train` uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    from tools import cli

    args = cli.build_parser().parse_args(
        ["train", "--features", str(folder / "features.csv"), "--labels",
         str(folder / "labels.csv"), "--id-column", "id", "--label-column", label_column,
         *options])
    train_set, test_set, _, _ = cli.datasets_from_args(args)
    balanced = "balanced" if args.class_weight == "balanced" else None  # the same weighting
    model = LogisticRegression(max_iter=5000, class_weight=balanced).fit(train_set.X, train_set.y)
    predicted = model.predict(test_set.X)
    scores = model.predict_proba(test_set.X)[:, 1]
    minority = int(np.argmin(np.bincount(train_set.y, minlength=2)))  # train's positive class
    return {"accuracy": float(np.mean(predicted == test_set.y)),
            "balanced_accuracy": float(balanced_accuracy_score(test_set.y, predicted)),
            "auc": float(roc_auc_score(test_set.y, scores)),
            "average_precision": float(average_precision_score(
                test_set.y == minority, scores if minority == 1 else 1.0 - scores)),
            "caught": minority_caught(test_set.y, predicted)}


def minority_caught(y, predicted) -> str:
    counts = np.bincount(y, minlength=2)
    minority = int(np.argmin(counts))
    return f"{int(np.sum((y == minority) & (predicted == minority)))}/{int(counts[minority])}"


def from_confusion(confusion) -> dict:
    """Balanced accuracy and the minority class caught from `train`'s confusion matrix."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    recall = np.diag(confusion) / np.maximum(support, 1)
    minority = int(np.argmin(support))
    return {"balanced_accuracy": float(recall.mean()),
            "caught": f"{int(confusion[minority, minority])}/{int(support[minority])}"}


def measure(name: str, folder: Path, options: list) -> str:
    label_column = TABLES[name][0]
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, str(REPO / "acml.py"), "train",
                   "--features", str(folder / "features.csv"),
                   "--labels", str(folder / "labels.csv"), "--id-column", "id",
                   "--label-column", label_column, "--quiet", "--json", str(report), *options]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # the --json suffices
        seconds = time.perf_counter() - start
        metrics = json.loads(report.read_text())
    ours = {"accuracy": metrics["test_accuracy"], "auc": metrics.get("test_auc"),
            "average_precision": metrics["test_average_precision"],
            **from_confusion(metrics["test_report"]["confusion"])}
    baseline = logistic_baseline(folder, label_column, options)
    mode = "plaintext" if "--plaintext" in options else "encrypted"
    return (f"| {name} | {mode} | {ours['accuracy']:.3f} | "
            f"{ours['balanced_accuracy']:.3f} | {ours['auc']:.3f} | {ours['caught']} | "
            f"{ours['average_precision']:.3f} | "
            f"{baseline['accuracy']:.3f} / {baseline['balanced_accuracy']:.3f} / "
            f"{baseline['auc']:.3f} / {baseline['caught']} / "
            f"{baseline['average_precision']:.3f} | {seconds:.1f} s |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split_parser = commands.add_parser("split", help="a dmba table as two organisations' files")
    split_parser.add_argument("table", choices=sorted(TABLES))
    split_parser.add_argument("folder", type=Path)
    measure_parser = commands.add_parser("measure", help="train on a split folder, and the "
                                                         "logistic regression beside it")
    measure_parser.add_argument("table", choices=sorted(TABLES))
    measure_parser.add_argument("folder", type=Path)
    measure_parser.add_argument("options", nargs=argparse.REMAINDER,
                                help="after --: the options of `acml.py train`")
    args = parser.parse_args(argv)
    if args.command == "split":
        features, labels = split(args.table, args.folder)
        print(f"wrote {features} and {labels}")
        return 0
    options = [option for option in args.options if option != "--"]
    print(measure(args.table, args.folder, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
