"""The command line: ``python acml.py train | predict | export | party | audit | bench``.

Every bad input ends in one line on stderr and exit code 2; the library (acml.py) does the work.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import acml
import checkpoint
import data
import nn
import paillier
import transport
import wire
from acml import DEFAULT_KEY_BITS, KEY_BITS_NOTE, REVEAL_FLAG, Config
from channel import LeakageError
from flaws import InsecureFlawWarning
from plan import FixedPointPlan


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


def add_model_options(parser) -> None:
    """The label party's choices (in `train` and in `party label`): declared once."""
    model = parser.add_argument_group("training")
    model.add_argument("--hidden", type=_parse_hidden, default=(8,),
                       help="hidden widths, comma-separated; the first is the interactive layer")
    model.add_argument("--activation", default="relu", choices=sorted(nn.ACTIVATIONS))
    model.add_argument("--epochs", type=_positive(int), default=3)
    model.add_argument("--batch-size", type=_positive(int), default=64)
    model.add_argument("--lr", type=_positive(float), default=0.1)
    model.add_argument("--momentum", type=float, default=0.0,
                       help="momentum for the layers above the first (the first is plain SGD)")
    model.add_argument("--seed", type=int, default=0,
                       help="public seed: the split, the batch order and the layers above")


def add_seed_and_bottom_options(parser) -> None:
    """The data party's choices (in `train` and in `party data`): declared once."""
    parser.add_argument("--init-seed", type=int, default=None,
                        help="the data party's own seed for W0, only to reproduce a run "
                             "(default: from secrets; the label party must never know W0)")
    parser.add_argument("--bottom", type=_positive(int), default=None, metavar="K",
                        help="give the data party a bottom model X → α (K wide, ReLU) under the "
                             "interactive layer; step 4b then reveals δ·Wᵀ to it (a label leak)")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default=None, choices=data.BUILTIN_DATASETS,
                        help="a built-in dataset (default: german_credit)")
    source.add_argument("--features", help="features CSV of the data party")
    source.add_argument("--labels", help="labels CSV of the label party")
    source.add_argument("--id-column", help="id column joining the two CSVs")
    source.add_argument("--label-column", help="label column of the labels CSV")
    source.add_argument("--test-fraction", type=float, default=0.2)
    add_model_options(parser)
    add_seed_and_bottom_options(parser)
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
    # Two party CSVs split as the two parties would (unstratified): see acml.prepare.
    return acml.prepare(dataset, test_fraction=args.test_fraction, seed=args.seed,
                        return_standardizer=True, stratified=not args.features)


def check_key_bits(bits: int, insecure: bool) -> None:
    """The key-size policy at the command line: under 1024 bits only with the insecure flag."""
    if bits < paillier.INSECURE_KEY_BITS and not insecure:
        raise UsageError(f"--key-bits {bits} is under {paillier.INSECURE_KEY_BITS} bits and not "
                         "secure; add --insecure-small-key for tests and demos")


def config_from_args(args) -> Config:
    check_key_bits(args.key_bits, args.insecure_small_key)
    return Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  key_bits=args.key_bits, seed=args.seed, allow_insecure=args.insecure_small_key,
                  plan=FixedPointPlan(sigma=args.sigma), bottom=args.bottom,
                  init_seed=args.init_seed,
                  packing=args.packing)


def with_transcript(path, run):
    """``run(transcript)`` with every message streamed to ``path`` as it crosses (a temporary
    file in the same directory, renamed into place only when the run is done), or with None."""
    if not path:
        return run(None)
    out = []
    checkpoint.write_atomically(path, lambda handle: out.append(run(handle)), mode="w")
    return out[0]


def command_train(args) -> int:
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    train_set, test_set, scaler = datasets_from_args(args)
    config = config_from_args(args)
    if args.key_bits == DEFAULT_KEY_BITS:
        print(f"note: {KEY_BITS_NOTE}", file=sys.stderr)
    with warnings.catch_warnings(), workers(args.workers) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        result = with_transcript(args.transcript, lambda transcript: acml.train(
            train_set, test_set, config, progress=not args.quiet,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, standardizer=scaler,
            executor=executor, transcript=transcript))
    if args.resume:
        print(f"resumed from {args.checkpoint_dir} after epoch "
              f"{result.metrics['resumed_after_epoch']}", file=sys.stderr)
    print(result.summary())
    if args.json:
        checkpoint.write_atomically(args.json, lambda handle: json.dump(result.metrics, handle,
                                                                      indent=2), mode="w")
    return 0


def command_predict(args) -> int:
    ids, X, names = data.load_features_csv(args.features, args.id_column)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        prediction = acml.predict(args.checkpoint_dir, X, feature_names=names, ids=ids,
                             source=args.features, allow_insecure=args.insecure_small_key)

    write_predictions(args.out, args.id_column, ids, prediction)
    return 0


def command_export(args) -> int:
    if not args.i_understand_this_reveals_the_weights:
        raise UsageError("export combines both parties' shares into the plaintext weights, which "
                         f"then stop being private; add {REVEAL_FLAG} to consent")
    arrays = acml.export_model(args.checkpoint_dir, args.out, i_understand_this_reveals_the_weights=True)
    names = [name for name in arrays if name.startswith(("bottom.", "layers."))]
    print(f"wrote {args.out}: {', '.join(names)}"
          " — these weights are no longer private", file=sys.stderr)
    return 0


def write_predictions(out, id_column: str, ids, prediction) -> None:
    """id, predicted_class and P(class) of every class, named, as CSV (to ``out`` or stdout)."""
    scores = prediction.scores

    def write(handle):
        writer = csv.writer(handle)
        classes = prediction.classes
        writer.writerow([id_column, "predicted_class", *(f"p_{name}" for name in classes)])
        for row, (row_id, name) in enumerate(zip(ids, prediction.class_names)):
            probabilities = ([1.0 - scores[row], scores[row]] if scores.ndim == 1
                             else list(scores[row]))
            writer.writerow([row_id, name, *(repr(float(p)) for p in probabilities)])

    if out:
        checkpoint.write_atomically(out, write, mode="w", newline="")
        print(f"wrote {len(ids)} predictions to {out}", file=sys.stderr)
    else:
        write(sys.stdout)


def command_party(args) -> int:
    """One party of a two-process run over TCP (transport.py): training, or with --predict,
    prediction from each party's own checkpoint."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
    if args.predict and (args.resume or not args.checkpoint_dir):
        raise UsageError("--predict needs --checkpoint-dir (this party's own checkpoint) and no "
                         "--resume")
    tls_files = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key,
                 "--tls-ca": args.tls_ca}
    given = [flag for flag, path in tls_files.items() if path]
    if given and len(given) < len(tls_files):
        missing = [flag for flag in tls_files if flag not in given]
        raise UsageError(f"TLS needs --tls-cert, --tls-key and --tls-ca together; "
                         f"{', '.join(given)} given without {', '.join(missing)}")
    # loaded now, so that a bad file is one line before any network use
    tls = None if not given else wire.tls_context(
        wire.TLSConfig(args.tls_cert, args.tls_key, args.tls_ca), server=args.role == "data")
    token = wire.read_token(args.token_file)
    frame_cap = int(args.max_frame_mb * 2 ** 20)
    bar = []

    def progress(done):
        if not bar:
            bar.append(acml.progress_bar(total_batches[0]))
        bar[0](None)

    total_batches = [0]
    with warnings.catch_warnings(), workers(args.workers) as executor:
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        if args.role == "data":
            run = with_transcript(args.transcript, lambda transcript: _data_party(
                args, token, tls, frame_cap, executor, None if args.quiet else progress,
                transcript))
        else:
            run = with_transcript(args.transcript, lambda transcript: _label_party(
                args, token, tls, frame_cap, executor, None if args.quiet else progress,
                transcript))
    if bar:
        bar[0].close()
    if args.predict and args.role == "label":
        session, ids, prediction = run
        write_predictions(args.out, "id", ids, prediction)
        print(session.summary(), file=sys.stderr)
        return 0
    print(run.summary())
    if getattr(args, "json", None):  # only `party label` writes the report
        metrics = run.metrics()
        checkpoint.write_atomically(args.json, lambda handle: json.dump(metrics, handle,
                                                                      indent=2), mode="w")
    return 0


def _data_party(args, token, tls, frame_cap, executor, progress, transcript):
    ids, X, feature_names = data.load_features_csv(args.features, args.id_column)
    host, port = wire.parse_address(args.listen, "--listen")
    if args.predict:
        keypair = None
    else:
        check_key_bits(args.key_bits, args.insecure_small_key)
        if args.resume and args.init_seed is not None:
            raise UsageError("--resume takes W's mask from the checkpoint; drop --init-seed")
        # Resuming, the key pair is the checkpoint's: no new one.
        keypair = None if args.resume else paillier.generate_keypair(
            args.key_bits, allow_insecure=args.insecure_small_key)
    with wire.listen(host, port) as listener:
        print(f"data party: listening on {wire.address_of(listener)}", flush=True)
        connection = wire.accept_peer(
            listener, token, timeout=args.timeout, handshake_timeout=args.handshake_timeout,
            max_frame_bytes=frame_cap, tls=tls,
            log=lambda line: print(f"data party: {line}", file=sys.stderr, flush=True))
    if args.predict:
        return transport.predict_as_data(connection, ids, X, args.checkpoint_dir,
                                         feature_names=feature_names, source=args.features,
                                         executor=executor,
                                         allow_insecure=args.insecure_small_key,
                                         transcript=transcript)
    return transport.run_data_party(connection, ids, X, keypair=keypair,
                                    plan=FixedPointPlan(sigma=args.sigma),
                                    init_seed=args.init_seed, bottom=args.bottom,
                                    executor=executor, progress=progress,
                                    checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                                    feature_names=feature_names,
                                    allow_insecure=args.insecure_small_key, transcript=transcript,
                                    align=args.align)


def _label_party(args, token, tls, frame_cap, executor, progress, transcript):
    host, port = wire.parse_address(args.connect, "--connect")
    if args.predict:
        connection = wire.connect_peer(host, port, token, timeout=args.timeout,
                                       max_frame_bytes=frame_cap, tls=tls)
        return transport.predict_as_label(connection, args.checkpoint_dir, executor=executor,
                                          allow_insecure=args.insecure_small_key,
                                          transcript=transcript)
    if not (args.labels and args.label_column and args.id_column):
        raise UsageError("party label needs --labels, --id-column and --label-column "
                         "(or --predict with --checkpoint-dir)")
    ids, y, class_names = data.load_labels_csv(args.labels, args.id_column, args.label_column)
    config = Config(hidden=args.hidden, activation=args.activation, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                    seed=args.seed, plan=FixedPointPlan(sigma=args.sigma),
                    allow_insecure=args.insecure_small_key, packing=args.packing)
    connection = wire.connect_peer(host, port, token, timeout=args.timeout,
                                   max_frame_bytes=frame_cap, tls=tls)
    return transport.run_label_party(connection, ids, y, len(class_names), config,
                                     test_fraction=args.test_fraction, executor=executor,
                                     progress=progress, checkpoint_dir=args.checkpoint_dir,
                                     resume=args.resume, class_names=class_names,
                                     transcript=transcript, align=args.align)


def add_party_parser(commands) -> None:
    """`party data` listens with the features and the key pair; `party label` connects with the
    labels, chooses the network and the training plan, and writes the report. With --predict,
    each predicts new rows from its own checkpoint."""
    party = commands.add_parser("party", help="one of two parties training together over TCP")
    roles = party.add_subparsers(dest="role", required=True)
    data_role = roles.add_parser("data", help="the data party: features and the key pair; listens")
    data_role.add_argument("--listen", required=True, metavar="HOST:PORT",
                           help="address to listen on (port 0: any free port, printed)")
    data_role.add_argument("--features", required=True, help="this party's features CSV")
    data_role.add_argument("--id-column", required=True, help="id column of the features CSV")
    data_role.add_argument("--key-bits", type=int, default=DEFAULT_KEY_BITS,
                           help=f"Paillier modulus size (default {DEFAULT_KEY_BITS})")
    add_seed_and_bottom_options(data_role)
    data_role.add_argument("--handshake-timeout", type=_positive(float),
                           default=wire.HANDSHAKE_SECONDS,
                           help="seconds each incoming connection has to prove the token (and "
                                "finish TLS); connections are authenticated in parallel, so a "
                                f"slow or idle one delays no other (default "
                                f"{wire.HANDSHAKE_SECONDS:g})")
    label_role = roles.add_parser("label", help="the label party: labels and the network; "
                                                "connects, and writes the report")
    label_role.add_argument("--connect", required=True, metavar="HOST:PORT",
                            help="the data party's address")
    label_role.add_argument("--labels", help="this party's labels CSV")
    label_role.add_argument("--id-column", help="id column of the labels CSV")
    label_role.add_argument("--label-column", help="label column of the labels CSV")
    add_model_options(label_role)
    label_role.add_argument("--test-fraction", type=float, default=0.2,
                            help="rows held out for prediction: a seeded split, not stratified "
                                 "(the data party has no labels); 0 for none")
    label_role.add_argument("--no-packing", dest="packing", action="store_false",
                            help="one value per ciphertext (the same weights, many times slower)")
    label_role.add_argument("--out", help="with --predict: write id, predicted_class and the "
                                          "probability of each class here (CSV; default stdout)")
    for role in (data_role, label_role):
        role.add_argument("--insecure-small-key", action="store_true",
                          help="allow keys under 1024 bits, also from a checkpoint (tests and "
                               "demos only: NOT secure)")
        role.add_argument("--sigma", type=int, default=40,
                          help="statistical hiding margin of every mask, in bits (default 40); "
                               "both parties must agree")
        role.add_argument("--workers", type=_positive(int), default=1,
                          help="processes for this party's modular exponentiations (default 1)")
        role.add_argument("--transcript", help="write every message this party sends or "
                                               "receives as JSON lines")
        role.add_argument("--json", help="write this party's report as JSON to this path")
        role.add_argument("--token-file", help="file holding the shared secret token (default: "
                                               "the ACML_TOKEN environment variable)")
        role.add_argument("--timeout", type=_positive(float), default=wire.DEFAULT_TIMEOUT,
                          help="seconds to wait for the peer: to connect, and for each message "
                               f"(default {wire.DEFAULT_TIMEOUT:g})")
        role.add_argument("--align", choices=transport.ALIGNMENTS, default=transport.PSI,
                          help="how the parties find their common ids: psi (private set "
                               "intersection: each learns the intersection and the other's "
                               "number of ids, nothing else; default) or public-ids (each "
                               "sends its whole id list in the clear); both must agree")
        tls = role.add_argument_group("TLS (all three, or none)")
        tls.add_argument("--tls-cert", metavar="PEM", help="this party's certificate")
        tls.add_argument("--tls-key", metavar="PEM", help="this party's private key")
        tls.add_argument("--tls-ca", metavar="PEM",
                         help="the CA that signed the other party's certificate (mutual TLS "
                              "1.3; the label party also checks the data party's host name)")
        role.add_argument("--max-frame-mb", type=_positive(float), default=256,
                          help="refuse larger messages (default 256)")
        role.add_argument("--quiet", action="store_true", help="no progress bar")
        role.add_argument("--checkpoint-dir", metavar="DIR",
                          help="after every epoch, save this party's own file here (and only "
                               "its own: each party keeps its own directory)")
        role.add_argument("--resume", action="store_true",
                          help="continue from this party's file in --checkpoint-dir up to the "
                               "label party's --epochs; both parties must resume, from the "
                               "same epoch")
        role.add_argument("--predict", action="store_true",
                          help="predict new rows (data party: --features holds them) with this "
                               "party's own checkpoint in --checkpoint-dir")
        role.set_defaults(handler=command_party)


def command_audit(args) -> int:
    import audit  # the audit pulls in every flaw's machinery: only load it when asked

    key_bits = audit.DEFAULT_KEY_BITS if args.key_bits is None else args.key_bits
    if args.key_bits is not None:  # the audit's default small key needs no flag
        check_key_bits(key_bits, args.insecure_small_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", paillier.InsecureKeyWarning)
        warnings.simplefilter("ignore", InsecureFlawWarning)
        audits = audit.run_audit(key_bits=key_bits)
    print(audit.format_table(audits, key_bits))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([row.to_json() for row in audits], handle, indent=2)
    expected = all(row.caught and row.succeeds_on_flawed and row.fails_on_real for row in audits)
    return 0 if expected else 1


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
    train_parser.add_argument("--checkpoint-dir", metavar="DIR",
                              help="after every epoch each party saves its own file in DIR")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run saved in --checkpoint-dir up to --epochs")
    train_parser.set_defaults(handler=command_train)
    predict_parser = commands.add_parser(
        "predict", help="encrypted prediction on new rows, with both parties' checkpoints")
    predict_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    predict_parser.add_argument("--features", required=True, help="features CSV of the new rows")
    predict_parser.add_argument("--id-column", required=True, help="id column of that CSV")
    predict_parser.add_argument("--out", help="write id, predicted_class and the probability of "
                                              "each class here (CSV); default: stdout")
    predict_parser.add_argument("--insecure-small-key", action="store_true",
                                help="accept a checkpoint key under 1024 bits (NOT secure)")
    predict_parser.set_defaults(handler=command_predict)
    export_parser = commands.add_parser(
        "export", help="combine both shares into a plaintext model: reveals the weights")
    export_parser.add_argument("--checkpoint-dir", metavar="DIR", required=True)
    export_parser.add_argument("--out", required=True, help="the model file (.npz)")
    export_parser.add_argument(REVEAL_FLAG, action="store_true",
                               help="both parties consent to revealing the weights")
    export_parser.set_defaults(handler=command_export)
    add_party_parser(commands)
    audit_parser = commands.add_parser("audit", help="re-create the six known flaws of production "
                                       "implementations; catch and attack each")
    audit_parser.add_argument("--json", help="write the table as a JSON list to this path")
    audit_parser.add_argument("--key-bits", type=int, default=None,
                              help="Paillier modulus size (default: a small demo key)")
    audit_parser.add_argument("--insecure-small-key", action="store_true",
                              help="allow an explicit --key-bits under 1024")
    audit_parser.set_defaults(handler=command_audit)
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
    except (ValueError, OverflowError, OSError, LeakageError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"acml.py {args.command}: error: {message}", file=sys.stderr)
        return 2


