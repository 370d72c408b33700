"""ACML — two-party deep learning over Paillier encryption, the user-facing module.

    python acml.py train                      # German credit, encrypted vs plaintext
    python acml.py train --dataset digits --hidden 16 --epochs 2 --json report.json

The API in three calls::

    train, test = acml.load_split("german_credit")
    result = acml.train(train, test, acml.Config(hidden=(8,), epochs=2))
    print(result.summary())

``train`` runs both parties in this process (each with only its own state, every message through
the checked channel of protocol.py) and, beside them, the plaintext twin: the same MLP trained on
the same batches in float64. The report compares the two. Combining the two weight shares into W
for that comparison is a diagnostic of this simulation only; no party can do it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, asdict

import numpy as np

import data
import nn
import paillier
import protocol
from protocol import FixedPointPlan

DEFAULT_KEY_BITS = 2048
KEY_BITS_NOTE = ("2048-bit key by default: with packing, German credit trains in about a minute "
                 "on one core; --workers 2 spreads the work over two")


@dataclass
class Config:
    """Hyper-parameters both parties agree on (all public)."""

    hidden: tuple = (8,)
    activation: str = "relu"
    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.0
    key_bits: int = DEFAULT_KEY_BITS
    seed: int = 0
    allow_insecure: bool = False
    plan: FixedPointPlan = field(default_factory=FixedPointPlan)
    packing: bool = True  # several values per ciphertext in steps 1 and 4 (same W either way)

    def layer_sizes(self, n_features: int, n_classes: int) -> tuple:
        out = 1 if n_classes == 2 else n_classes
        return (n_features, *self.hidden, out)


@dataclass
class Result:
    data_party: protocol.DataParty
    label_party: protocol.LabelParty
    channel: protocol.Channel
    plaintext: nn.MLP
    losses: list
    plaintext_losses: list
    seconds: float
    metrics: dict

    def summary(self) -> str:
        return format_report(self.metrics)


def load_split(name: str, *, test_fraction: float = 0.2, seed: int = 0):
    """A built-in dataset, split (stratified, seeded) and standardised on the training part."""
    return prepare(data.load_builtin(name), test_fraction=test_fraction, seed=seed)


def prepare(dataset: data.Dataset, *, test_fraction: float = 0.2, seed: int = 0):
    train_set, test_set = data.train_test_split(dataset, test_fraction=test_fraction, seed=seed)
    scaler = data.Standardizer().fit(train_set.X)
    train_set.X = scaler.transform(train_set.X)
    test_set.X = scaler.transform(test_set.X)
    return train_set, test_set


def joint_first_layer(data_party: protocol.DataParty, label_party: protocol.LabelParty):
    """W = W_B + ε_acc as floats. Simulation diagnostics and tests only: no party can do this."""
    return (label_party.weight_share + data_party.noise_acc).decode()


def train(train_set: data.Dataset, test_set: data.Dataset | None = None,
          config: Config | None = None, *, progress: bool = False, keypair=None,
          executor=None) -> Result:
    """Train encrypted (two parties) and plaintext (the twin) on the same batches, and compare.

    ``executor`` (any concurrent.futures.Executor, e.g. a ProcessPoolExecutor or a dask client's
    get_executor()) runs the modular exponentiations of both parties; None runs them here.
    """
    config = config or Config()
    sizes = config.layer_sizes(train_set.X.shape[1], train_set.n_classes)
    start = time.perf_counter()
    data_party = protocol.DataParty(train_set.X, plan=config.plan, key_bits=config.key_bits,
                                    allow_insecure=config.allow_insecure, keypair=keypair,
                                    init_seed=config.seed)
    label_party = protocol.LabelParty(train_set.y, sizes, activation=config.activation,
                                      lr=config.lr, momentum=config.momentum,
                                      batch_size=config.batch_size, epochs=config.epochs,
                                      seed=config.seed, plan=config.plan)
    channel = protocol.Channel(sigma=config.plan.sigma)
    protocol.setup(data_party, label_party, channel, packing=config.packing, executor=executor)

    n_batches = -(-len(train_set.y) // config.batch_size)
    bar = _progress_bar(config.epochs * n_batches) if progress else None
    losses = []
    for epoch in range(config.epochs):
        update = None
        if bar is not None:
            def update(loss, epoch=epoch):
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                bar.update(1)
        losses.extend(protocol.train_epoch(data_party, label_party, channel, epoch, update))
    if bar is not None:
        bar.close()
    encrypted_seconds = time.perf_counter() - start

    plaintext = nn.MLP(sizes, activation=config.activation, seed=config.seed)
    history = nn.train_plaintext(plaintext, train_set.X, train_set.y, epochs=config.epochs,
                                 batch_size=config.batch_size, lr=config.plan.snap_lr(config.lr),
                                 seed=config.seed,
                                 momentum=config.momentum)

    metrics = {
        "dataset": train_set.name,
        "n_train": int(len(train_set.y)),
        "n_test": int(len(test_set.y)) if test_set is not None else 0,
        "layer_sizes": list(sizes),
        "key_bits": data_party.public_key.n.bit_length(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seconds": encrypted_seconds,
        "final_loss": float(np.mean(losses[-n_batches:])),
        "plaintext_final_loss": float(np.mean(history["batch_loss"][-n_batches:])),
        "max_abs_weight_diff": max_weight_diff(data_party, label_party, plaintext),
        "packing": label_party.packing.to_dict() if label_party.packing else None,
    }
    if test_set is not None:
        scores = protocol.predict_scores(data_party, label_party, channel, test_set.X)
        predicted = label_party.model.classes_from_scores(scores)
        plain_predicted = plaintext.predict(test_set.X)
        metrics["test_accuracy"] = float(np.mean(predicted == test_set.y))
        metrics["plaintext_test_accuracy"] = float(np.mean(plain_predicted == test_set.y))
        metrics["prediction_agreement"] = float(np.mean(predicted == plain_predicted))
    totals = channel.totals()
    metrics["messages"] = sum(t["messages"] for t in totals.values())
    metrics["bytes"] = sum(t["bytes"] for t in totals.values())
    metrics["per_party"] = totals
    metrics["leakage"] = channel.report()
    metrics["step_seconds"] = dict(channel.step_seconds)
    metrics["step_ops"] = {k: dict(v) for k, v in channel.step_ops.items()}
    return Result(data_party, label_party, channel, plaintext, losses,
                  list(history["batch_loss"]), encrypted_seconds, metrics)


def max_weight_diff(data_party, label_party, plaintext: nn.MLP) -> float:
    """max |W − W_plain| over every weight and bias of every layer."""
    diffs = [np.abs(joint_first_layer(data_party, label_party) - plaintext.layers[0].W).max(),
             np.abs(label_party.model.layers[0].b - plaintext.layers[0].b).max()]
    for mine, theirs in zip(label_party.model.layers[1:], plaintext.layers[1:]):
        diffs += [np.abs(mine.W - theirs.W).max(), np.abs(mine.b - theirs.b).max()]
    return float(max(diffs))


def _progress_bar(total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc="encrypted training", unit="batch", file=sys.stderr,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------
def format_report(metrics: dict) -> str:
    lines = [f"dataset {metrics['dataset']}: {metrics['n_train']} training rows, layers "
             f"{metrics['layer_sizes']}, {metrics['key_bits']}-bit Paillier key, "
             f"{metrics['epochs']} epochs of batches of {metrics['batch_size']}"]
    if "test_accuracy" in metrics:
        lines.append(f"test accuracy      encrypted {metrics['test_accuracy']:.4f}   plaintext "
                     f"{metrics['plaintext_test_accuracy']:.4f}   same prediction on "
                     f"{100 * metrics['prediction_agreement']:.1f}% of {metrics['n_test']} rows")
    lines.append(f"final loss         encrypted {metrics['final_loss']:.6f}   plaintext "
                 f"{metrics['plaintext_final_loss']:.6f}")
    lines.append(f"max |W − W_plain|  {metrics['max_abs_weight_diff']:.3e} over all layers "
                 "(fixed-point quantisation)")
    lines.append(f"wall time          {metrics['seconds']:.1f} s encrypted training")
    if metrics.get("packing"):
        lines.append(f"packing            {metrics['packing']['forward']['slots']} rows per "
                     f"ciphertext in step 1, {metrics['packing']['backward']['slots']} features "
                     "per ciphertext in step 4")
    steps = metrics.get("step_seconds", {})
    if steps:
        lines.append("time per step      " + "   ".join(f"{k}: {v:.1f} s" for k, v in steps.items()))
    for party, total in metrics["per_party"].items():
        lines.append(f"{party} party sent   {total['messages']} messages, "
                     f"{total['bytes'] / 1e6:.2f} MB")
    lines.append("")
    lines.append("what crossed, and what the receiver learns:")
    header = f"  {'step':<8}{'from → to':<16}{'message':<22}{'kind':<12}{'count':>6}  learns"
    lines.append(header)
    for row in metrics["leakage"]:
        lines.append(f"  {row['step']:<8}{row['sender'] + ' → ' + row['receiver']:<16}"
                     f"{row['name']:<22}{row['kind']:<12}{row['count']:>6}  {row['learned']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
class UsageError(ValueError):
    """Bad input at the command line: reported in one line, exit code 2."""


def _parse_hidden(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes widths like 8 or 16,8, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden widths must be positive, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_training_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default=None, choices=data.BUILTIN_DATASETS,
                        help="a built-in dataset (default: german_credit)")
    source.add_argument("--features", help="features CSV of the data party")
    source.add_argument("--labels", help="labels CSV of the label party")
    source.add_argument("--id-column", help="id column joining the two CSVs")
    source.add_argument("--label-column", help="label column of the labels CSV")
    source.add_argument("--test-fraction", type=float, default=0.2)
    model = parser.add_argument_group("training")
    model.add_argument("--hidden", type=_parse_hidden, default=(8,),
                       help="hidden widths, comma-separated; the first is the interactive layer")
    model.add_argument("--activation", default="relu", choices=sorted(nn.ACTIVATIONS))
    model.add_argument("--epochs", type=_positive(int), default=2)
    model.add_argument("--batch-size", type=_positive(int), default=64)
    model.add_argument("--lr", type=_positive(float), default=0.1)
    model.add_argument("--momentum", type=float, default=0.0,
                       help="momentum for the layers above the first (the first is plain SGD)")
    model.add_argument("--seed", type=int, default=0)
    crypto = parser.add_argument_group("encryption")
    crypto.add_argument("--key-bits", type=int, default=DEFAULT_KEY_BITS,
                        help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    crypto.add_argument("--insecure-small-key", action="store_true",
                        help="allow keys under 1024 bits (tests and demos only: NOT secure)")
    crypto.add_argument("--sigma", type=int, default=40,
                        help="statistical hiding margin of every mask, in bits (default 40)")
    crypto.add_argument("--no-packing", dest="packing", action="store_false",
                        help="one value per ciphertext (the same weights, many times slower)")
    crypto.add_argument("--workers", type=_positive(int), default=1,
                        help="processes for the modular exponentiations (default 1: this one)")


def datasets_from_args(args):
    if args.features or args.labels:
        missing = [flag for flag, value in (("--features", args.features),
                                            ("--labels", args.labels),
                                            ("--id-column", args.id_column),
                                            ("--label-column", args.label_column)) if not value]
        if missing:
            raise UsageError(f"CSV input needs {', '.join(missing)}")
        if args.dataset:
            raise UsageError("give either --dataset or --features/--labels, not both")
        dataset = data.load_csv_pair(args.features, args.labels, id_column=args.id_column,
                                     label_column=args.label_column)
    else:
        dataset = data.load_builtin(args.dataset or "german_credit")
    if not 0.0 < args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    return prepare(dataset, test_fraction=args.test_fraction, seed=args.seed)


def config_from_args(args) -> Config:
    return Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  key_bits=args.key_bits, seed=args.seed, allow_insecure=args.insecure_small_key,
                  plan=FixedPointPlan(sigma=args.sigma), packing=args.packing)


def command_train(args) -> int:
    train_set, test_set = datasets_from_args(args)
    config = config_from_args(args)
    if args.key_bits == DEFAULT_KEY_BITS:
        print(f"note: {KEY_BITS_NOTE}", file=sys.stderr)
    with warnings.catch_warnings(), workers(args.workers) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        result = train(train_set, test_set, config, progress=not args.quiet, executor=executor)
    print(result.summary())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result.metrics, handle, indent=2)
    if args.transcript:
        with open(args.transcript, "w") as handle:
            for line in result.channel.transcript_lines():
                handle.write(line + "\n")
    return 0


def command_bench(args) -> int:
    import bench  # benchmarks are not the library: loaded only for this command

    bench.run(quick=args.quick, workers=args.workers, json_path=args.json)
    return 0


@contextmanager
def workers(count: int):
    """A process pool of ``count`` workers for the modular exponentiations (None for 1)."""
    if count <= 1:
        yield None
        return
    with ProcessPoolExecutor(count) as executor:
        yield executor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acml.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train encrypted and plaintext, compare")
    add_training_options(train_parser)
    train_parser.add_argument("--json", help="write the report as JSON to this path")
    train_parser.add_argument("--transcript", help="write every message as JSON lines")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train_parser.set_defaults(handler=command_train)
    bench_parser = commands.add_parser("bench", help="benchmark against python-paillier")
    bench_parser.add_argument("--quick", action="store_true",
                              help="tiny sizes and small keys: a smoke test of the benchmark")
    bench_parser.add_argument("--workers", type=_positive(int), default=2,
                              help="processes for the runs on workers (default 2)")
    bench_parser.add_argument("--json", help="write the results as JSON to this path")
    bench_parser.set_defaults(handler=command_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OverflowError, OSError, protocol.LeakageError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"acml.py {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
