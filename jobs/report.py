"""The report of a run, as text: the classes, the test report beside the majority baseline, and
the one-process summary. The one-process run (simulation.py) and each party of a two-process
run (network/transport.py) write their reports with these lines."""

from __future__ import annotations

import numpy as np

import nn
from channel import leakage_lines
from jobs import data


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def classes_line(class_names) -> str:
    """The classes found, and what the network outputs for them:
    ``2 classes: bad, good — one sigmoid output, P(good)`` or
    ``3 classes: a, b, c — training softmax over 3 outputs``."""
    names = [str(name) for name in class_names]
    found = data.describe_classes(names)
    if len(names) == 2:
        return f"{found} — one sigmoid output, P({names[1]})"
    return f"{found} — training softmax over {len(names)} outputs"


def test_report_lines(reports: dict, class_names, differing: int | None = None) -> list:
    """Report lines for nn.classification_report results, one column per model
    (``{"encrypted": ..., "plaintext": ...}``): accuracy beside the majority baseline, AUC
    (binary), precision / recall / F1 and the confusion matrix."""
    first = next(iter(reports.values()))
    names = [str(name) for name in class_names]

    def row(label, cell):
        return f"{label:<18} " + "   ".join(f"{model} {cell(r)}" for model, r in reports.items())

    accuracy = row("test accuracy", lambda r: f"{r['accuracy']:.4f}")
    if differing is not None:
        accuracy += f"   predictions differ on {differing} of {first['n']} rows"
    lines = [accuracy,
             f"majority baseline  {first['majority_baseline']:.4f}: the accuracy of always "
             f"predicting {names[first['majority_class']]!r}, the floor to beat"]
    if first["auc"] is not None:
        lines.append(row("test ROC AUC", lambda r: f"{r['auc']:.4f}")
                     + "   (a constant guess: 0.5)")
    elif "auc_note" in first:
        lines.append(f"test ROC AUC       none: {first['auc_note']}")
    which = (f"of class {names[1]!r}" if first["n_classes"] == 2
             else f"macro average over {first['n_classes']} classes")
    lines.append(row("precision/recall/F1",
                     lambda r: f"{r['precision']:.3f}/{r['recall']:.3f}/{r['f1']:.3f}")
                 + f"   ({which})")
    if first["n_classes"] <= 12:
        lines.append(f"confusion matrix   rows: true class, columns: predicted, in the order "
                     f"{', '.join(names)}")
        lines += [f"  {model:<17}{r['confusion']}" for model, r in reports.items()]
    else:
        lines.append("confusion matrix   in --json (test_report.confusion)")
    return lines


def format_report(metrics: dict) -> str:
    lines = [f"dataset {metrics['dataset']}: {metrics['n_train']} training rows, layers "
             f"{metrics['layer_sizes']}, {metrics['key_bits']}-bit Paillier key, "
             f"{plural(metrics['epochs'], 'epoch')} of batches of {metrics['batch_size']}",
             f"classes            {metrics['classes']}"]
    if "test_report" in metrics:
        lines += test_report_lines({"encrypted": metrics["test_report"],
                                    "plaintext": metrics["plaintext_test_report"]},
                                   metrics["class_names"], metrics["predictions_differing"])
    lines.append(f"final loss         encrypted {metrics['final_loss']:.6f}   plaintext "
                 f"{metrics['plaintext_final_loss']:.6f}")
    lines.append(f"max |W − W_plain|  {metrics['max_abs_weight_diff']:.3e} over all layers "
                 "(fixed-point quantisation)")
    if metrics.get("input_perturbation"):
        dp = metrics["input_perturbation"]
        lines.append(f"input rows         perturbed by the data party: ({dp['epsilon']:g}, "
                     f"{dp['delta']:g})-DP per row, clipped to C = {dp['clip']:.4g}, "
                     f"σ = {dp['sigma']:.4g}; both runs train on the noisy rows")
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
    lines.append("what crossed, and what the receiver learns from one such message:")
    return "\n".join(lines + leakage_lines(metrics["leakage"]))  # + the cumulative leaks


def run_metrics(train_set, config, sizes, data_party, label_party, public, twin_losses,
                seconds: float, weight_gap: float) -> dict:
    """The one-process run's numbers: the data, the network and the key, the final loss of the
    encrypted run beside its plaintext twin's (mean over the last epoch's batches), and
    max |W − W_plain|, the gap the fixed-point quantisation left."""
    n_batches = -(-len(train_set.y) // config.batch_size)
    metrics = {
        "dataset": train_set.name,
        "classes": classes_line(train_set.class_names),
        "class_names": list(train_set.class_names),
        "n_train": int(len(train_set.y)),
        "n_test": 0,
        "layer_sizes": list(sizes),
        "key_bits": data_party.public_key.n.bit_length(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seconds": seconds,
        "final_loss": float(np.mean(label_party.losses[-n_batches:])),
        "plaintext_final_loss": float(np.mean(twin_losses[-n_batches:])),
        "max_abs_weight_diff": weight_gap,
        "packing": None if public.packing is None else public.packing.to_dict(),
    }
    if config.bottom is not None:
        metrics["bottom_width"] = data_party.bottom.width
    if config.block_rows:
        metrics["block_rows"] = config.block_rows
    return metrics


def test_metrics(y, n_classes: int, predicted, scores, plain_predicted, plain_scores) -> dict:
    """The test rows, encrypted prediction beside the twin's: nn.classification_report of each,
    their agreement, and (accuracy hides a lot on skewed classes) the majority baseline and,
    for two classes, the AUC."""
    report = nn.classification_report(y, predicted, scores, n_classes)
    plain_report = nn.classification_report(y, plain_predicted, plain_scores, n_classes)
    metrics = {"n_test": int(len(y)),
               "test_accuracy": report["accuracy"],
               "plaintext_test_accuracy": plain_report["accuracy"],
               "prediction_agreement": float(np.mean(predicted == plain_predicted)),
               "predictions_differing": int(np.sum(predicted != plain_predicted)),
               "majority_class_rate": report["majority_baseline"]}
    if report["auc"] is not None or "auc_note" in report:
        metrics["test_auc"] = report["auc"]
        metrics["plaintext_test_auc"] = plain_report["auc"]
        if "auc_note" in report:  # null in the JSON, never NaN; the reason beside it
            metrics["test_auc_note"] = report["auc_note"]
    metrics["test_report"] = report
    metrics["plaintext_test_report"] = plain_report
    return metrics
