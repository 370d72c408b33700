"""The settings of a run: the hyper-parameters both parties agree on, all public."""

from __future__ import annotations

from dataclasses import dataclass, field

import nn
from plan import FixedPointPlan

DEFAULT_KEY_BITS = 2048
KEY_BITS_NOTE = ("2048-bit key by default: with packing, German credit's headline run takes "
                 "under a minute on one core (44 s measured); --workers 2 spreads the work "
                 "over two")


@dataclass
class Config:
    """Hyper-parameters both parties agree on (all public).

    The network's defaults are ``nn.HEADLINE``, measured on German credit over several secret
    W0 draws (tests/test_nn.py::test_headline_defaults_beat_baselines)."""

    hidden: tuple = nn.HEADLINE["hidden"]
    activation: str = nn.HEADLINE["activation"]
    epochs: int = nn.HEADLINE["epochs"]
    batch_size: int = nn.HEADLINE["batch_size"]
    lr: float = nn.HEADLINE["lr"]
    momentum: float = nn.HEADLINE["momentum"]
    key_bits: int = DEFAULT_KEY_BITS
    seed: int = nn.HEADLINE["seed"]  # public: the split, the batch order, the layers above
    allow_insecure: bool = False  # keys under 1024 bits (tests and demos)
    plan: FixedPointPlan = field(default_factory=FixedPointPlan)
    allow_insecure_sigma: bool = False  # plan.sigma under 40 bits (tests and demos)
    bottom: object = None  # None, a width k (ReLU) or (k, activation): the data party's bottom model
    # The data party's own seed for W0 (and its bottom model). None: drawn from `secrets`, as it
    # must be in a deployment — the label party must never be able to compute W0. An int only
    # to reproduce a run exactly (the tests do).
    init_seed: int | None = None
    packing: bool = True  # several values per ciphertext in steps 1 and 4 (same W either way)
    # Batches of whole fixed row blocks of this many rows (nn.block_minibatches), so that the
    # data party encrypts each block once at setup instead of every batch's rows; 0: row
    # batches. At most the rows one packed ciphertext holds (19 at 2048 bits, the default plan).
    block_rows: int = 0
    # The data party's input perturbation, (ε, δ)-DP for each row of X (privacy/): off when
    # dp_epsilon is None; dp_delta None with ε given means input_perturbation.DEFAULT_DELTA.
    # Its own choice, like init_seed: the label party neither needs nor can check it.
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    # The label party's, for rare classes: the loss's class weights (None, "balanced" — from its
    # own training labels — or one number per class id), and for two classes the decision
    # threshold on P(positive class) (None: class 1 at P >= 0.5) and the positive class id the
    # reports name (None: the minority class of the training labels).
    class_weight: object = None
    threshold: float | None = None
    positive_class: int | None = None

    def label_settings(self, layer_sizes) -> dict:
        """The label party's own settings, as its checkpoint records them (all but epochs)."""
        return {"layer_sizes": list(layer_sizes), "activation": self.activation, "lr": self.lr,
                "momentum": self.momentum, "batch_size": self.batch_size, "seed": self.seed,
                "block_rows": self.block_rows, "fixed_point": self.plan.to_dict(),
                "class_weight": nn.class_weight_setting(self.class_weight)}

    def decision(self, y, n_classes: int) -> tuple:
        """(threshold, positive class id) of this run: the positive class asked for, else the
        minority class of the training labels ``y`` (class 1 for more than two classes, where
        the reports average over all classes)."""
        positive = self.positive_class
        if positive is None:
            positive = nn.default_positive_class(y, n_classes)
        return nn.check_threshold(self.threshold, positive, 1 if n_classes == 2 else n_classes,
                                  "sigmoid_bce" if n_classes == 2 else "softmax_ce")

    def settings(self) -> dict:
        """The run's settings as the JSON report records them (all public, and the data
        party's own seed only when the user fixed it)."""
        return {"seed": self.seed, "activation": self.activation, "hidden": list(self.hidden),
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "momentum": self.momentum, "key_bits": self.key_bits,
                "sigma": self.plan.sigma, "packing": self.packing, "block_rows": self.block_rows,
                "bottom": self.bottom, "init_seed": self.init_seed,
                # JSON has no infinity: ε = ∞ (no perturbation) is written "inf"
                "dp_epsilon": (self.dp_epsilon if self.dp_epsilon is None
                               or self.dp_epsilon != float("inf") else "inf"),
                "dp_delta": self.dp_delta,
                "class_weight": nn.class_weight_setting(self.class_weight),
                "threshold": self.threshold, "positive_class": self.positive_class}

    def layer_sizes(self, n_features: int, n_classes: int) -> tuple:
        """The network above the data: its input is X, or the bottom model's output α."""
        out = 1 if n_classes == 2 else n_classes
        if self.bottom is not None:
            n_features = self.bottom if isinstance(self.bottom, int) else self.bottom[0]
        return (n_features, *self.hidden, out)
