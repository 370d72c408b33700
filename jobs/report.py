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
    (``{"encrypted": ..., "plaintext": ...}``): accuracy beside the majority baseline, balanced
    accuracy, ROC AUC and PR-AUC (binary), precision / recall / F1 of the named positive class
    (binary; else the macro average) and the confusion matrix."""
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
    if "balanced_accuracy" in first:
        lines.append(row("balanced accuracy", lambda r: f"{r['balanced_accuracy']:.4f}")
                     + f"   (mean recall over the classes; a constant guess: "
                       f"{1 / first['n_classes']:.2g})")
    positive = first.get("positive_class", 1)
    if first["auc"] is not None:
        lines.append(row("test ROC AUC", lambda r: f"{r['auc']:.4f}")
                     + "   (a constant guess: 0.5)")
    elif "auc_note" in first:
        lines.append(f"test ROC AUC       none: {first['auc_note']}")
    if first.get("average_precision") is not None:
        rate = first["per_class"][positive]["support"] / first["n"]
        lines.append(row("test PR-AUC", lambda r: f"{r['average_precision']:.4f}")
                     + f"   (average precision of {names[positive]!r}; a constant guess: "
                       f"{rate:.4f}, its rate)")
    if first["n_classes"] == 2:
        support = first["per_class"][positive]["support"]
        caught = first["confusion"][positive][positive] if support else 0
        which = f"of the positive class {names[positive]!r}: {caught} of its {support} caught"
    else:
        which = f"macro average over {first['n_classes']} classes"
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


def decision_line(metrics: dict) -> str | None:
    """How the run weighs the classes and decides, when it does anything but the default."""
    settings = metrics.get("settings", {})
    parts = []
    if settings.get("class_weight") is not None:
        how = "balanced" if settings["class_weight"] == nn.BALANCED else "given"
        parts.append(f"class weights ({how}) " + ", ".join(
            f"{name} {weight:.3g}" for name, weight in zip(metrics["class_names"],
                                                           metrics["class_weights"])))
    if settings.get("threshold") is not None:
        positive = metrics["class_names"][metrics["positive_class"]]
        parts.append(f"predicts {positive!r} when P({positive}) >= {settings['threshold']:g}")
    return ("decision           " + "; ".join(parts)) if parts else None


def format_report(metrics: dict) -> str:
    lines = [f"dataset {metrics['dataset']}: {metrics['n_train']} training rows, layers "
             f"{metrics['layer_sizes']}, {metrics['key_bits']}-bit Paillier key, "
             f"{plural(metrics['epochs'], 'epoch')} of batches of {metrics['batch_size']}",
             f"classes            {metrics['classes']}"]
    decision = decision_line(metrics)
    if decision:
        lines.append(decision)
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
        "settings": config.settings(),
        "positive_class": label_party.model.positive_class,
        "class_weights": (None if label_party.model.class_weight is None
                          else label_party.model.class_weight.tolist()),
        # every batch's loss, in order: the encrypted run's (the label party's) and its twin's
        "loss_history": {"encrypted": [float(loss) for loss in label_party.losses],
                         "plaintext": [float(loss) for loss in twin_losses],
                         "batches_per_epoch": n_batches},
    }
    if config.bottom is not None:
        metrics["bottom_width"] = data_party.bottom.width
    if config.block_rows:
        metrics["block_rows"] = config.block_rows
    return metrics


def test_metrics(y, n_classes: int, predicted, scores, plain_predicted, plain_scores, *,
                 positive_class: int = 1) -> dict:
    """The test rows, encrypted prediction beside the twin's: nn.classification_report of each
    (for two classes, of ``positive_class``), their agreement, and (accuracy hides a lot on
    skewed classes) the majority baseline, balanced accuracy and, for two classes, ROC AUC and
    PR-AUC."""
    report = nn.classification_report(y, predicted, scores, n_classes,
                                      positive_class=positive_class)
    plain_report = nn.classification_report(y, plain_predicted, plain_scores, n_classes,
                                            positive_class=positive_class)
    metrics = {"n_test": int(len(y)),
               "test_accuracy": report["accuracy"],
               "plaintext_test_accuracy": plain_report["accuracy"],
               "prediction_agreement": float(np.mean(predicted == plain_predicted)),
               "predictions_differing": int(np.sum(predicted != plain_predicted)),
               "majority_class_rate": report["majority_baseline"],
               "test_balanced_accuracy": report["balanced_accuracy"]}
    if n_classes == 2:
        metrics["test_average_precision"] = report["average_precision"]
    if report["auc"] is not None or "auc_note" in report:
        metrics["test_auc"] = report["auc"]
        metrics["plaintext_test_auc"] = plain_report["auc"]
        if "auc_note" in report:  # null in the JSON, never NaN; the reason beside it
            metrics["test_auc_note"] = report["auc_note"]
    metrics["test_report"] = report
    metrics["plaintext_test_report"] = plain_report
    return metrics


PLOT_FILES = ("loss.png", "roc.png", "precision_recall.png")


def plot_run(metrics: dict, path, test_labels=None, test_scores=None) -> list:
    """Draw a run: the loss of every batch (encrypted and its plaintext twin), and for two
    classes with test rows the ROC and precision–recall curves of the positive class, from the
    encrypted prediction's scores (nn.curve_points). ``path`` ending in .png: one figure with
    the panels side by side; otherwise a folder (made if missing) with one file per panel,
    PLOT_FILES. Returns the paths written. matplotlib's Agg backend: no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    panels = [("loss", lambda axes: _draw_loss(axes, metrics))]
    binary = (test_scores is not None and np.ndim(test_scores) == 1
              and len(metrics.get("class_names", [])) == 2)
    if binary:
        positive = metrics.get("positive_class", 1)
        names = metrics["class_names"]
        is_positive = (np.asarray(test_labels) == positive).astype(np.int64)
        scores = np.asarray(test_scores) if positive == 1 else 1.0 - np.asarray(test_scores)
        curves = nn.curve_points(is_positive, scores)
        report = metrics.get("test_report", {})
        panels += [("roc", lambda axes: _draw_roc(axes, curves, report, names[positive])),
                   ("precision_recall", lambda axes: _draw_pr(axes, curves, report,
                                                              names[positive],
                                                              is_positive.mean()))]
    path = Path(path)
    written = []
    if path.suffix.lower() == ".png":
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
        for axis, (_, draw) in zip(np.atleast_1d(axes), panels):
            draw(axis)
        figure.suptitle(f"{metrics.get('dataset', 'run')}: {metrics['classes']}", fontsize=9)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return [str(path)]
    path.mkdir(exist_ok=True)
    for name, draw in panels:
        figure, axis = plt.subplots(figsize=(5, 4))
        draw(axis)
        figure.tight_layout()
        target = path / f"{name}.png"
        figure.savefig(target, dpi=100)
        plt.close(figure)
        written.append(str(target))
    return written


def _draw_loss(axes, metrics: dict) -> None:
    history = metrics.get("loss_history", {})
    for label, key in (("encrypted", "encrypted"), ("plaintext twin", "plaintext")):
        losses = history.get(key) or []
        if losses:
            axes.plot(np.arange(1, len(losses) + 1), losses, label=label,
                      linestyle="-" if key == "encrypted" else "--")
    per_epoch = history.get("batches_per_epoch")
    if per_epoch:
        for epoch_end in range(per_epoch, len(history.get("plaintext") or []), per_epoch):
            axes.axvline(epoch_end + 0.5, color="grey", linewidth=0.5)
    axes.set_xlabel("batch")
    axes.set_ylabel("training loss (batch mean)")
    axes.set_title("loss per batch (epochs: grey lines)")
    axes.legend()


def _draw_roc(axes, curves: dict, report: dict, positive: str) -> None:
    auc = report.get("auc")
    axes.plot(curves["fpr"], curves["tpr"],
              label=f"encrypted, AUC {auc:.3f}" if auc is not None else "encrypted")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="constant guess")
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel(f"true-positive rate (recall of {positive})")
    axes.set_title(f"ROC, test rows, positive class {positive}")
    axes.legend(loc="lower right")


def _draw_pr(axes, curves: dict, report: dict, positive: str, rate: float) -> None:
    precision = report.get("average_precision")
    axes.step(curves["recall"], curves["precision"], where="post",
              label=f"encrypted, AP {precision:.3f}" if precision is not None else "encrypted")
    axes.axhline(rate, color="grey", linestyle=":", label=f"constant guess ({rate:.3f})")
    axes.set_xlabel(f"recall of {positive}")
    axes.set_ylabel(f"precision of {positive}")
    axes.set_ylim(0, 1.02)
    axes.set_title(f"precision–recall, positive class {positive}")
    axes.legend(loc="lower left")
