"""ACML — two-party deep learning over Paillier encryption, the user-facing module.

    python acml.py train                      # German credit, encrypted vs plaintext
    python acml.py train --dataset digits --hidden 16 --epochs 2 --json report.json
    python acml.py party data --listen HOST:PORT --features F.csv --id-column id --token-file T
    python acml.py party label --connect HOST:PORT --labels L.csv --id-column id \
        --label-column y --token-file T --json report.json

The API in three calls::

    train, test = acml.load_split("german_credit")
    result = acml.train(train, test, acml.Config(hidden=(8,), epochs=2))
    print(result.summary())

``train`` runs both parties in this process (each with only its own state, every message through
the checked channel of protocol.py) and, beside them, the plaintext twin: the same MLP trained on
the same batches in float64. The report compares the two. Combining the two weight shares into W
for that comparison is a diagnostic of this simulation only; no party can do it.

This module is the library's front door: it names the API and holds none of the machinery. The
run itself, read top to bottom, is jobs/simulation.py's ``train`` (build both parties, the
channel, protocol.setup, protocol.train, the plaintext twin, the report); the pieces it calls
live by idea in jobs/ (settings, data, twin, report, estimate, progress, export). Nothing in
the project imports this module, so the command line (tools/cli.py, which ``main`` loads) and
the scikit-learn estimator (tools/estimator.py, loaded on first use) build on jobs/ too, and
the imports form no circle.
"""

from __future__ import annotations

import sys

from jobs.export import MODEL_FORMAT, REVEAL_FLAG, PlainModel, export_model, load_model
from jobs.settings import DEFAULT_KEY_BITS, Config
from jobs.simulation import Result, predict, train
from jobs.data import load_split, prepare
from jobs.twin import fixed_point_gap, joint_first_layer, max_weight_diff

__all__ = ["Config", "Result", "load_split", "prepare", "train", "predict", "export_model",
           "load_model", "PlainModel", "VerticalMLPClassifier", "joint_first_layer",
           "max_weight_diff", "fixed_point_gap", "DEFAULT_KEY_BITS", "REVEAL_FLAG", "MODEL_FORMAT"]


def __getattr__(name):
    """``acml.VerticalMLPClassifier`` (tools/estimator.py), imported on first use: the library
    and the CLI do not import scikit-learn until the estimator is asked for."""
    if name == "VerticalMLPClassifier":
        from tools.estimator import VerticalMLPClassifier
        return VerticalMLPClassifier
    raise AttributeError(f"module 'acml' has no attribute {name!r}")


def main(argv=None) -> int:
    """The command line (tools/cli.py): ``python acml.py train``, ``party``, ``audit``, ``bench``…"""
    from tools import cli  # the CLI imports the benchmark and the audit; the library imports neither
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
