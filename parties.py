"""The two parties. Each holds only its own state, sets all of it in ``__init__``, and changes it
only through its own methods, which protocol.py calls through the channel (``make``/``take``).

* :class:`DataParty` (A): the features X, the Paillier key pair, ε_acc (``noise_acc``), and an
  optional :class:`BottomModel` under the interactive layer.
* :class:`LabelParty` (B): the labels y, A's public key, the weight share W_B = W − ε_acc, the
  first layer's bias and every layer above (an :class:`nn.MLP` without the first weight).

Each method is the math of its step; its Paillier work goes through the party's ``engine``, a
handful of operations named after the math (encrypt, decrypt, matmul, add_mask, masked_matmul,
rerandomize): paillier.TextbookEngine by default, or speed.engine.FastEngine for the same
numbers, faster. Every mask is drawn here, by the party, before anything is computed with it.

A party restored from its checkpoint is built by ``DataParty.restored`` / ``LabelParty.restored``
(checkpoint.py), never by writing into it from outside.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

import nn
import paillier
from channel import MaskSource
from fixed import Fixed, max_abs_bits
from paillier import EncryptedArray, PublicKey, decode_signed, mod_n
from plan import (FLAW_NAMES, MAX_FLAW_NAMES, MAX_INPUTS, MAX_SAMPLES, SHARE_GROWTH_BITS,
                  FixedPointPlan, Public, TrainingPlan, check_sigma, encode_features,
                  weight_share_bits)

INIT_SEED_BITS = 128  # the data party's secret seed of W0: beyond any search
BOTTOM_SEED_STREAM = 0xB07  # the bottom layer's init stream: apart from every MLP layer's index
MAX_PREDICTION_ROWS = 1 << 20  # the most rows the label party accepts in one prediction
BOTTOM_REFUSAL = ("refusing the data party's bottom model: step 4b would send it δ·Wᵀ, which "
                  "reveals the labels (leak L4, separation AUC up to 1.000); to consent, build "
                  "the label party with allow_bottom=True (command line: party label "
                  "--allow-bottom)")


class BottomModel:
    """The data party's own layer below the interactive one: α = act(X·W + b), d → k.

    α, not X, is then the interactive layer's input, so [[α]] is encrypted afresh every batch.
    The bottom model never leaves the data party; step 4b gives it ∂L/∂α = δ·Wᵀ, and it takes a
    plain SGD step. Its initial weights come from ``np.random.default_rng([seed,
    BOTTOM_SEED_STREAM])`` with the data party's secret init seed: weights, never a mask.
    """

    def __init__(self, n_features: int, width: int, activation: str = "relu", seed: int = 0,
                 *, layer: nn.Dense | None = None):
        if activation not in nn.ACTIVATIONS:
            raise ValueError(f"unknown bottom activation {activation!r}; expected one of "
                             f"{sorted(nn.ACTIVATIONS)}")
        if layer is None:
            rng = np.random.default_rng([int(seed), BOTTOM_SEED_STREAM])
            layer = nn.Dense(n_features, width, rng=rng, init=nn.INIT_FOR_ACTIVATION[activation])
        self.layer = layer
        self.activation_name = activation
        self.activation = nn.ACTIVATIONS[activation]()

    @classmethod
    def from_weights(cls, W, b, activation: str) -> "BottomModel":
        """A bottom model with these weights (copied): a restored or exported one."""
        W, b = np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)
        layer = nn.Dense(W.shape[0], W.shape[1], rng=np.random.default_rng(0))
        layer.W, layer.b = W, b
        return cls(W.shape[0], W.shape[1], activation, layer=layer)

    def copy(self) -> "BottomModel":
        return BottomModel.from_weights(self.layer.W, self.layer.b, self.activation_name)

    @property
    def n_features(self) -> int:
        return self.layer.n_in

    @property
    def width(self) -> int:
        return self.layer.n_out

    def describe(self) -> str:
        return f"{self.width} wide ({self.activation_name})"

    def forward(self, X) -> np.ndarray:
        return self.activation.forward(self.layer.forward(X))

    def backward_step(self, input_gradient, lr: float) -> None:
        """∂L/∂α → ∂L/∂W, ∂L/∂b through the activation, then W −= η·∂L/∂W, b −= η·∂L/∂b."""
        self.layer.backward(self.activation.backward(input_gradient))
        self.layer.W -= lr * self.layer.dW
        self.layer.b -= lr * self.layer.db


def make_bottom(spec, n_features: int, seed: int) -> BottomModel | None:
    """None, a width k (ReLU), a pair (k, activation), an nn.Dense (or a pair (nn.Dense,
    activation)) to use as it is, or a BottomModel — over ``n_features`` inputs."""
    if spec is None:
        return None
    if isinstance(spec, nn.Dense):
        spec = (spec, "identity")
    if isinstance(spec, tuple) and isinstance(spec[0], nn.Dense):
        layer, activation = spec
        if layer.W is None:
            raise ValueError("the bottom model's nn.Dense layer has no weight")
        spec = BottomModel(layer.n_in, layer.n_out, activation, layer=layer)
    if isinstance(spec, BottomModel):
        if spec.n_features != n_features:
            raise ValueError(f"the bottom model takes {spec.n_features} features, the data "
                             f"party has {n_features}")
        return spec
    width, activation = (spec, "relu") if isinstance(spec, (int, np.integer)) else spec
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"the bottom model's width must be a positive integer, got {width!r}")
    return BottomModel(n_features, int(width), activation, seed)


@dataclass(frozen=True)
class Restored:
    """What a party's checkpoint gives back to it (checkpoint.py): its share of the first
    layer, the training plan it trained under, and the epochs it completed."""

    share: Fixed  # ε_acc at the data party, W_B at the label party
    training: dict
    epochs_completed: int
    weight_bound: int | None = None  # the label party's proven bound on |W_int|
    parameters: dict | None = None  # the label party's bias and layers above, by nn's names
    velocity: dict | None = None  # and its optimiser's momentum


def check_start(start: str, restored: Restored | None, party: str) -> None:
    if (start == "new") != (restored is None):
        state = "restored from a checkpoint" if restored else "not restored from a checkpoint"
        raise ValueError(f"setup {start!r}: the {party} party is {state}")


# ----------------------------------------------------------------------------------------------
# Party A
# ----------------------------------------------------------------------------------------------
class DataParty:
    """Party A: owns the features X, the Paillier key pair and noise_acc (ε_acc).

    ``init_seed`` seeds the first layer's initial weights W0 (and the bottom model), which only
    this party draws and at once splits into ε_acc and the label party's share: its own secret,
    128 bits from ``secrets`` unless given (the tests give it, to compare with a plaintext twin).

    ``bottom`` (a width k, a pair (k, activation), or a :class:`BottomModel`) puts a bottom
    model under the interactive layer (step 4b). ``engine`` does its Paillier arithmetic:
    paillier.TextbookEngine by default, speed.engine.FastEngine (what acml.train and the command
    line use) for the same numbers, faster. ``restored`` is its checkpoint's state
    (checkpoint.py), when resuming or predicting. ``allow_insecure_sigma`` accepts a plan whose
    σ is under plan.MIN_SECURE_SIGMA (40 bits): tests and demos only (plan.check_sigma).

    ``flaws`` names the INSECURE flaws it declares in step 0: none here. The parties of
    attacks/flaws.py, subclasses that each deviate in one method, declare theirs, so that the
    channel and the audit see them.
    """

    flaws: tuple[str, ...] = ()

    def __init__(self, X, *, plan: FixedPointPlan | None = None, key_bits: int = 2048,
                 allow_insecure: bool = False, keypair=None, init_seed: int | None = None,
                 bottom=None, engine=None, mask_source: MaskSource | None = None,
                 restored: Restored | None = None, allow_insecure_sigma: bool = False):
        self.plan = plan or FixedPointPlan()
        if restored is None:  # a checkpoint's plan met the policy when it was first built
            check_sigma(self.plan.sigma, allow_insecure_sigma)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] == 0 or (X.shape[0] == 0 and restored is None):
            raise ValueError(f"features must be a non-empty 2-D array, got shape {X.shape}")
        self.features = encode_features(X, self.plan)
        if keypair is None:
            keypair = paillier.generate_keypair(key_bits, allow_insecure=allow_insecure)
        self.public_key, self._private_key = keypair
        self.init_seed = secrets.randbits(INIT_SEED_BITS) if init_seed is None else init_seed
        self.bottom = make_bottom(bottom, X.shape[1], self.init_seed)
        self._raw_features = X if self.bottom is not None else None
        self.engine = engine or paillier.TextbookEngine()
        self.mask_source = mask_source or MaskSource()
        self.restored = restored
        self.noise_acc: Fixed | None = None if restored is None else restored.share
        self.epochs_completed = 0 if restored is None else restored.epochs_completed
        self.training: TrainingPlan | None = None
        self.lr_int: int | None = None
        self.public: Public | None = None
        self.input_gradients_received: list[np.ndarray] = []  # step 4b: δ·Wᵀ, decrypted
        self._rows_to_predict: np.ndarray | None = None
        # What this party keeps from one message to the next (each set and cleared in its step):
        self.batch_inputs: Fixed | None = None  # step 1 → 1: the batch's X (or α), for X·ε_acc
        self.decrypted_product: np.ndarray | None = None  # step 1 → 1: U = X·W_B + ε_B, decrypted
        self.decrypted_gradient: np.ndarray | None = None  # step 4 → 4: G' = Xᵀδ + ε_B', decrypted
        # Progress of step 0's [[X]] (minutes at 30,000 rows): on_progress(done, total), when
        # set (acml.train sets it for its bar).
        self.on_progress = None

    @property
    def private_key(self) -> paillier.PrivateKey:
        """This party's own secret key (p, q). For this party's own code only — its checkpoint,
        its own view of what it received (the audit) — never for a message: nothing in the
        protocol sends it."""
        return self._private_key

    @property
    def n_samples(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def n_inputs(self) -> int:
        """Width of the interactive layer's input: k with a bottom model, else d."""
        return self.n_features if self.bottom is None else self.bottom.width

    def encrypt(self, fixed: Fixed, *, progress=None) -> EncryptedArray:
        """[[fixed]] under this party's key, a fresh r per value (every encryption it sends)."""
        return self.engine.encrypt(self._private_key, fixed, progress=progress)

    def encrypt_inputs(self, inputs: Fixed) -> EncryptedArray:
        """This batch's interactive-layer input, kept for step 1's own part X·ε_acc, encrypted
        (packed along the rows, k per ciphertext, when the layout packs)."""
        self.batch_inputs = inputs
        if self.public.packing is not None:
            inputs = Fixed(self.public.packing.forward.pack(inputs.values, axis=0), inputs.scale)
        return self.encrypt(inputs)

    # step 0 -------------------------------------------------------------------------------
    def shapes(self, start: str) -> dict:
        n_samples = len(self._rows_to_predict) if start == "predict" else self.n_samples
        return {"start": start, "n_samples": n_samples, "n_inputs": self.n_inputs,
                "bottom": self.bottom is not None, "insecure_flaws": list(self.flaws)}

    def accept_training_plan(self, payload, start: str) -> None:
        """Check the label party's plan against this party's own: the same fixed-point plan, a
        key large enough, and, restored, the very plan of the checkpoint but for the epochs."""
        check_start(start, self.restored, "data")
        training = TrainingPlan.from_dict(payload)
        if training.fixed_point != self.plan:
            raise ValueError(f"the label party's fixed-point plan {training.fixed_point.to_dict()}"
                             f" differs from the data party's {self.plan.to_dict()}")
        if self.restored is not None:
            if training.epochs_completed != self.epochs_completed:
                raise ValueError(f"the label party's checkpoint is after epoch "
                                 f"{training.epochs_completed}, the data party's after epoch "
                                 f"{self.epochs_completed}; restore both from the same epoch")
            mine = self.restored.training
            for key, value in training.to_dict().items():
                if key not in ("epochs", "epochs_completed") and mine.get(key) != value:
                    raise ValueError(f"the training plan's {key} is {value!r}, the data party's "
                                     f"checkpoint has {mine.get(key)!r}")
        elif training.epochs_completed != 0:
            raise ValueError(f"a new run, but the label party's plan says "
                             f"{training.epochs_completed} epochs completed")
        self.plan.check_key(self.public_key.n.bit_length(), training.batch_size, self.n_inputs)
        self.training, self.lr_int = training, self.plan.quantize_lr(training.lr)

    def split_initial_weight(self) -> np.ndarray:
        """Draw W0, keep a random ε_acc (never zero), and return the share W0 − ε_acc."""
        sizes = (self.n_inputs, self.training.n_hidden)
        first = nn.init_layer(sizes, 0, self.training.activation, self.init_seed)
        weight0 = Fixed.encode(first.W, self.plan.w_frac_bits)
        if max_abs_bits(weight0.values) >= self.plan.weight_bits:
            raise OverflowError(f"initial weights exceed the plan's bound "
                                f"2**{self.plan.weight_int_bits}")
        self.noise_acc = Fixed.from_ints(self.draw_initial_noise(weight0.shape),
                                         self.plan.w_frac_bits)
        return (weight0 - self.noise_acc).values

    def draw_initial_noise(self, shape) -> np.ndarray:
        """ε_acc at the start: uniform, σ bits wider than W0, so W0 − ε_acc hides W0."""
        return self.mask_source.uniform(shape, self.plan.noise_acc_bits(), self.plan.w_frac_bits)

    def check_packing(self, public: Public, proposed) -> None:
        """The label party's layout must be none, or the one these public facts give."""
        derived = public.derive_packing()
        if proposed is not None and (derived is None or proposed != derived.to_dict()):
            raise ValueError(f"the label party proposed the packing layout {proposed}, the data "
                             f"party derives {None if derived is None else derived.to_dict()}")

    def begin(self, public: Public) -> None:
        """End of step 0: the public facts, which every step reads; the engine's preparations."""
        self.public = public
        self.engine.start(self._private_key, public, training=self._rows_to_predict is None)

    def encrypt_features(self) -> EncryptedArray:
        """[[X]], fresh randomness per ciphertext, encrypted by the key owner; packed, each
        row's d features k per plaintext (the backward slots), n × ⌈d/k⌉ ciphertexts."""
        features = self.features
        if self.public.packing is not None:
            features = Fixed(self.public.packing.backward.pack(features.values, axis=1),
                             features.scale)
        return self.encrypt(features, progress=self.on_progress)

    # step 1 -------------------------------------------------------------------------------
    def select_rows(self, rows) -> None:
        """The paper's path (step 0's [[X]], or its row blocks): this batch's rows of X."""
        self.batch_inputs = self.features[rows]

    def encrypt_rows(self, rows) -> EncryptedArray:
        """Packed step 1: [[X_batch]], ⌈m/k⌉ × d fresh ciphertexts (the public batch order
        makes this reveal nothing new); in step 0 with row blocks, every block's rows."""
        return self.encrypt_inputs(self.features[rows])

    def encrypt_bottom_output(self, rows) -> EncryptedArray:
        """With a bottom model: α = bottom(X[rows]), checked, encoded and freshly encrypted."""
        alpha = self.bottom.forward(self._raw_features[rows])
        return self.encrypt_inputs(encode_features(alpha, self.plan, what="bottom output"))

    def decrypt_masked_product(self, masked_product) -> None:
        """U = X·W_B + ε_B, kept until the next message: ε_B hides X·W_B from this party."""
        self.decrypted_product = self.engine.decrypt(self._private_key, masked_product)

    def add_own_part(self) -> np.ndarray:
        """V = U + X·ε_acc (mod n) = X·W + ε_B. Packed, X·ε_acc goes into the same slots as
        X·W_B."""
        own_part = (self.batch_inputs @ self.noise_acc).values
        if self.public.packing is not None:
            # X·ε_acc alone spills over the slots; only the sum z = X·W has to fit them.
            own_part = self.public.packing.forward.pack(own_part, axis=0, intermediate=True)
        noisy = mod_n(self.decrypted_product + own_part, self.public_key.n)
        self.decrypted_product = None
        return noisy

    # step 4b ------------------------------------------------------------------------------
    def encrypt_noise_acc(self) -> EncryptedArray:
        """[[ε_acc]], fresh r per value: the label party needs it for δ·(W_B + ε_acc)ᵀ."""
        return self.encrypt(self.noise_acc)

    def update_bottom(self, encrypted_input_gradient: EncryptedArray) -> None:
        """Decrypt ∂L/∂α = δ·Wᵀ (exact, at scale δ + W) and take a plain SGD step on the bottom."""
        residues = self.engine.decrypt(self._private_key, encrypted_input_gradient)
        gradient = Fixed(decode_signed(residues, self.public_key),
                         encrypted_input_gradient.scale).decode()
        self.input_gradients_received.append(gradient)  # its own view: what leak L4 reads
        self.bottom.backward_step(gradient, self.plan.snap_lr(self.training.lr))

    # step 4 -------------------------------------------------------------------------------
    def decrypt_masked_gradient(self, masked_gradient) -> None:
        """G' = Xᵀδ + ε_B', kept until the next message: ε_B' hides Xᵀδ from this party."""
        self.decrypted_gradient = self.engine.decrypt(self._private_key, masked_gradient)

    def mask_gradient(self, batch_size: int) -> np.ndarray:
        """Add a fresh mask ε_A to G' and fold η·ε_A into ε_acc. Packed, ε_A is drawn per slot
        (one per weight, σ bits wider than the gradient it hides) into the same slots."""
        mask = self.mask_source.uniform(self.noise_acc.shape,
                                        self.plan.gradient_mask_bits(batch_size),
                                        self.plan.x_frac_bits + self.plan.delta_frac_bits)
        self.noise_acc = self.noise_acc + Fixed.from_ints(self.lr_int * mask,
                                                          self.plan.w_frac_bits)
        if self.public.packing is not None:
            mask = self.public.packing.backward.pack(mask, axis=0)
        masked = mod_n(self.decrypted_gradient + mask, self.public_key.n)
        self.decrypted_gradient = None
        return masked

    def finish_epoch(self, epochs_completed: int) -> None:
        self.epochs_completed = epochs_completed
        self.engine.finish_epoch(epochs_completed)  # offline, between epochs

    # prediction ---------------------------------------------------------------------------
    def set_rows_to_predict(self, X_new) -> None:
        """The new rows (standardised like the training rows) that the next prediction
        encrypts. Checked now, before any encryption."""
        X_new = np.asarray(X_new, dtype=np.float64)
        if X_new.ndim != 2 or X_new.shape[0] == 0 or X_new.shape[1] != self.n_features:
            raise ValueError(f"rows to predict of shape {X_new.shape}: the model takes "
                             f"{self.n_features} columns")
        encode_features(X_new, self.plan)
        self._rows_to_predict = X_new

    def prediction_count(self) -> int:
        return len(self._rows_to_predict)

    def encrypt_rows_to_predict(self) -> EncryptedArray:
        """[[X_new]] (or [[bottom(X_new)]]), packed along the rows as in step 1."""
        values = self._rows_to_predict
        if self.bottom is not None:
            return self.encrypt_inputs(encode_features(self.bottom.forward(values), self.plan,
                                                       what="bottom output"))
        return self.encrypt_inputs(encode_features(values, self.plan))


# ----------------------------------------------------------------------------------------------
# Party B
# ----------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """What prediction from checkpoints gives the label party, row by row.

    ``scores`` as the model outputs them: P(class 1) of shape (m,) for two classes, the softmax
    (m, k) otherwise. ``confidence`` is the probability of the predicted class; ``classes`` the
    name of every class, in class-id order.
    """

    class_ids: np.ndarray
    class_names: list
    scores: np.ndarray
    confidence: np.ndarray
    classes: list
    rule: str = ""  # two classes: the decision rule applied, e.g. "'yes' where P(yes) >= 0.3"


class LabelParty:
    """Party B: owns the labels y, the weight share W_B = W − ε_acc, and the layers above.

    ``model`` is an :class:`nn.MLP` built without the first layer's weight: the label party keeps
    the first layer's bias and every layer above, and runs them with the plaintext code.
    ``packing`` lets it propose packed slots in step 0 (where they help). ``engine``: as for
    :class:`DataParty`. ``restored`` is its checkpoint's state (checkpoint.py); ``losses`` and
    ``predictions`` are what it ends with. ``allow_insecure_sigma``: as for :class:`DataParty`,
    a σ under 40 bits for tests and demos. ``flaws``: as for :class:`DataParty`.

    ``allow_bottom`` is this party's consent to a data party with a bottom model: step 4b then
    sends it δ·Wᵀ, which reveals label information (leak L4: separation AUC 0.97–0.98 on breast
    cancer, 1.000 after 16 batches with ``--bottom 8``). Without it, a data party whose step-0
    shapes declare ``bottom: true`` is refused there, before anything else crosses. Prediction
    sends no input gradient, so it needs no consent; a checkpoint records it (checkpoint.py).

    ``class_weight``: the loss's per-class weights as set (None, "balanced" or one number per
    class; nn.class_weights turns "balanced" into numbers from this party's own training labels,
    which no other party sees). ``threshold`` and ``positive_class`` (two classes): its decision
    rule (nn.decide); ``positive_class`` None: the minority class of its training labels.
    """

    flaws: tuple[str, ...] = ()

    def __init__(self, y, layer_sizes, *, activation="relu", lr=0.1, momentum=0.0,
                 batch_size=64, epochs=1, seed=0, plan: FixedPointPlan | None = None,
                 engine=None, mask_source: MaskSource | None = None, packing: bool = True,
                 public_key: PublicKey | None = None, restored: Restored | None = None,
                 allow_insecure: bool = False, allow_insecure_sigma: bool = False,
                 block_rows: int = 0, allow_bottom: bool = False, class_weight=None,
                 threshold=None, positive_class=None):
        self.plan = plan or FixedPointPlan()
        if restored is None:  # a checkpoint's plan met the policy when it was first built
            check_sigma(self.plan.sigma, allow_insecure_sigma)
        self.allow_insecure = bool(allow_insecure)
        self.allow_bottom = bool(allow_bottom)  # consent to step 4b's label leak (L4)
        self.engine = engine or paillier.TextbookEngine()
        self.mask_source = mask_source or MaskSource()
        self.packing = packing
        self.labels = np.asarray(y)
        self.layer_sizes = tuple(int(s) for s in layer_sizes)
        nn.check_class_ids(self.labels, self.layer_sizes[-1])
        n_classes = max(2, self.layer_sizes[-1])
        self.class_weight = class_weight  # the setting; the model holds its numbers
        if positive_class is None:
            positive_class = nn.default_positive_class(self.labels, n_classes)
        # a party that only predicts has no labels to weigh: "balanced" needs them
        weights = nn.class_weights(class_weight, self.labels, n_classes) if self.labels.size \
            else None
        self.model = nn.MLP(self.layer_sizes, activation=activation, seed=seed,
                            first_layer_weight=False, class_weight=weights, threshold=threshold,
                            positive_class=positive_class)
        self.optimizer = nn.SGD(self.plan.snap_lr(lr), momentum=momentum)
        if restored is not None:
            for name, value in restored.parameters.items():
                _, index, attribute = name.split(".")
                setattr(self.model.layers[int(index)], attribute, np.array(value, np.float64))
            self.optimizer.load_state_dict(restored.velocity)
        self.lr, self.batch_size, self.epochs, self.seed = lr, batch_size, epochs, seed
        self.block_rows = block_rows  # batches of whole row blocks (plan.TrainingPlan)
        self.lr_int = self.plan.quantize_lr(lr)
        self.restored = restored
        if (public_key is None) != (restored is None):
            raise ValueError("a restored label party needs the public key its share is under")
        self.public_key = public_key
        self.weight_share: Fixed | None = None if restored is None else restored.share
        # A proven bound on |W_int|: 2**weight_bits at setup, grown by every update. Only the
        # label party can keep it (it alone knows δ); packing checks every slot of z against it.
        self.weight_bound: int | None = None if restored is None else restored.weight_bound
        self.epochs_completed = 0 if restored is None else restored.epochs_completed
        self.public: Public | None = None
        self.encrypted_features = self.encrypted_blocks = None  # [[X]], [[X_blocks]] of step 0
        self.losses: list[float] = []
        self.predictions: np.ndarray | None = None  # scores of the last prediction
        self.preactivation: np.ndarray | None = None  # z of the last step 1 (its own view)
        self._last_delta: Fixed | None = None  # δ of the last step 3, kept for own_delta()
        self._expected_predictions = 0
        # What this party keeps from one message to the next (each set and cleared in its step):
        self.batch_inputs: EncryptedArray | None = None  # step 1: [[X]] (or [[α]]) of the batch
        self.forward_mask: np.ndarray | None = None  # ε_B, from [[X·W_B + ε_B]] until X·W + ε_B
        self.dlogits: np.ndarray | None = None  # step 2 → 3: ∂L/∂logits
        self.delta: Fixed | None = None  # step 3 → 4b, 4: δ = ∂L/∂z at its fixed-point scale
        self.encrypted_noise_acc: EncryptedArray | None = None  # step 4b: [[ε_acc]]
        self.backward_mask: np.ndarray | None = None  # ε_B', from [[Xᵀδ + ε_B']] until its reply
        self.weight_bound_growth = 0  # step 4: how far this batch's update can move |W|

    # step 0 -------------------------------------------------------------------------------
    def accept_public_key(self, public_key: PublicKey, start: str) -> None:
        """Step 0: refuse a key that is not one. PublicKey itself refuses an even, square or
        tiny n (n = 15, say); the key-size policy (paillier.check_key_size) refuses one under
        1024 bits unless this party was built with ``allow_insecure``. A restored party takes
        only the key of its checkpoint."""
        check_start(start, self.restored, "label")
        if not isinstance(public_key, PublicKey):
            raise ValueError(f"the data party's public key is not a Paillier public key: "
                             f"{type(public_key).__name__}")
        if self.public_key is None:  # a restored party's key passed the policy at load
            try:
                public_key.check_policy(allow_insecure=self.allow_insecure)
            except ValueError as error:
                raise ValueError(f"refusing the data party's public key: {error}") from None
        if self.public_key is not None and public_key != self.public_key:
            raise ValueError(f"the data party's public key (fingerprint "
                             f"{public_key.fingerprint[:12]}) is not the key the label party's "
                             f"weight share was made under ({self.public_key.fingerprint[:12]})")
        self.public_key = public_key

    def check_shapes(self, shapes, start: str) -> None:
        """The data party's counts must fit the labels and the network, and its start ours; a
        bottom model in training only with this party's consent (``allow_bottom``)."""
        expected = {"start", "n_samples", "n_inputs", "bottom", "insecure_flaws"}
        if not isinstance(shapes, dict) or set(shapes) != expected:
            unknown = sorted(set(shapes) - expected) if isinstance(shapes, dict) else []
            raise ValueError(f"the data party's shapes are malformed"
                             f"{' (unknown fields: ' + ', '.join(unknown)[:80] + ')' if unknown else ''}"
                             f": {str(shapes)[:200]}")
        if shapes["start"] != start:
            raise ValueError(f"the data party starts {str(shapes['start'])[:40]!r}, the label "
                             f"party {start!r}")
        for key, cap in (("n_samples", MAX_SAMPLES), ("n_inputs", MAX_INPUTS)):
            value = shapes[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise ValueError(f"the data party declares {key} = {str(value)[:40]}; it must "
                                 f"be an integer in 1..{cap:,}")
        if not isinstance(shapes["bottom"], bool):
            raise ValueError(f"the data party's shapes: bottom must be true or false, "
                             f"got {shapes['bottom']!r}")
        if shapes["bottom"] and start != "predict" and not self.allow_bottom:
            raise ValueError(BOTTOM_REFUSAL)
        flaws = shapes["insecure_flaws"]
        if not isinstance(flaws, list) or len(flaws) > MAX_FLAW_NAMES or not all(
                isinstance(name, str) and name in FLAW_NAMES for name in flaws):
            raise ValueError(f"the data party's shapes: insecure_flaws must be a list of flaw "
                             f"names (at most {MAX_FLAW_NAMES}), got {str(flaws)[:80]}")
        if start != "predict" and shapes["n_samples"] != len(self.labels):
            raise ValueError(f"the data party has {shapes['n_samples']} aligned rows, the label "
                             f"party {len(self.labels)}")
        if shapes["n_inputs"] != self.layer_sizes[0]:
            raise ValueError(f"the data party's interactive layer takes {shapes['n_inputs']} "
                             f"inputs, the network's input width is {self.layer_sizes[0]}")

    def training_plan(self) -> TrainingPlan:
        """Hyper-parameters the data party needs: all public."""
        return TrainingPlan(self.layer_sizes[1], self.model.activation, self.lr, self.batch_size,
                            self.epochs, self.seed, self.plan, self.epochs_completed,
                            tuple(self.flaws), self.block_rows)

    def accept_weight_share(self, share: np.ndarray) -> None:
        self.weight_share = Fixed.from_ints(share, self.plan.w_frac_bits)
        self.weight_bound = 1 << self.plan.weight_bits  # A refused any W0 beyond

    def propose_packing(self, public: Public) -> dict | None:
        """The slot layout from public facts only (plan.useful_packing), or none."""
        layout = public.derive_packing() if self.packing else None
        return None if layout is None else layout.to_dict()

    def begin(self, public: Public) -> None:
        """The end of step 0: the public facts, which every step reads; the engine's
        preparations."""
        self.public = public
        self.engine.start(self.public_key, public, training=len(self.labels) > 0)

    def keep_encrypted_features(self, encrypted: EncryptedArray) -> None:
        self.encrypted_features = encrypted

    def keep_encrypted_blocks(self, encrypted: EncryptedArray) -> None:
        self.encrypted_blocks = encrypted

    # step 1 -------------------------------------------------------------------------------
    def select_rows(self, rows) -> None:
        """The paper's path: this batch's rows of step 0's [[X]]; packed with row blocks, this
        batch's blocks of step 0's [[X_blocks]]."""
        self.batch_inputs = (self.encrypted_blocks[self.public.blocks_of(rows)]
                             if self.public.encrypts_blocks() else self.encrypted_features[rows])

    def keep_batch_inputs(self, encrypted: EncryptedArray) -> None:
        """This batch's [[α]] or [[X_batch]], or a prediction's [[X_new]]: the interactive
        layer's input. For a prediction, its shape must be that of the rows announced."""
        if self._expected_predictions:
            self._check_incoming(encrypted, self.public.rows_shape(self._expected_predictions),
                                 "[[X_new]]")
        elif not isinstance(encrypted, EncryptedArray):
            raise ValueError(f"the data party's batch input is {type(encrypted).__name__}, not "
                             "a ciphertext array")
        self.batch_inputs = encrypted

    def masked_product(self, n_rows: int):
        """[[U]] = [[X]]·W_B + [[ε_B]], ε_B fresh and uniform mod n (drawn here, in full); its
        fresh encryption re-randomises the result.

        First, privately: W_B must be within the public bound the declared width assumes, and,
        packed, every slot of z = X·W must fit: |z| ≤ d · 2**(x bits) · weight_bound, else
        OverflowError (never a wrap-around).
        """
        share_bits = weight_share_bits(self.plan, self.batch_size, self.lr)
        if max_abs_bits(self.weight_share.values) > share_bits:
            raise OverflowError(f"the weight share outgrew its public bound of {share_bits} bits "
                                f"(after more than 2**{SHARE_GROWTH_BITS} batches, or |W| far "
                                "beyond the plan's bound)")
        if self.public.packing is not None:
            self.public.packing.check_preactivation_fits(self.layer_sizes[0], self.weight_bound)
        inputs, weights = self.batch_inputs, self.weight_share
        self.forward_mask = self.draw_mask((inputs.shape[0], weights.shape[1]),
                                           inputs.scale + weights.scale)
        return self.engine.masked_matmul(inputs, weights, self.forward_mask)

    def draw_mask(self, shape, scale: int) -> np.ndarray:
        """ε_B or ε_B': uniform in Z_n, so v + ε mod n is uniform whatever v is — even a v the
        data party crafted under its own key (leak L3 of an interval mask); removed exactly mod
        n. ``scale``: the fractional bits of the value it hides (a uniform residue ignores it)."""
        return self.mask_source.residues(shape, self.public_key.n, self.public.mask_bits, scale)

    def unmask(self, received: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """What the data party sent back, minus this party's own mask, as signed integers: the
        mask cancels exactly mod n (OverflowError if the result is no small signed value)."""
        return decode_signed(mod_n(received - mask, self.public_key.n), self.public_key)

    def unmask_preactivation(self, noisy: np.ndarray, n_rows: int) -> None:
        """z = V − ε_B + b = X·W + b, as floats (packed: unpacked slot by slot)."""
        z_int = self.unmask(noisy, self.forward_mask)
        self.forward_mask = None
        if self.public.packing is not None:
            z_int = self.public.packing.forward.unpack(z_int, n_rows, axis=0)
        z = Fixed.from_ints(z_int, self.plan.z_frac_bits).decode()
        self.preactivation = z + self.model.layers[0].b

    # steps 2 and 3 ------------------------------------------------------------------------
    def forward_rest(self, rows) -> None:
        logits = self.model.forward_top(self.preactivation)
        loss, self.dlogits = self.model.loss_and_grad(logits, self.labels[rows])
        self.losses.append(float(loss))

    def backward_rest(self) -> None:
        """δ = ∂L/∂z; update the bias and the layers above; keep δ at its fixed-point scale."""
        delta = self.model.backward_top(self.dlogits)
        self.dlogits = None
        self.model.layers[0].backward_bias(delta)
        self.optimizer.step(self.model.top_named_params())
        limit = 2.0 ** self.plan.delta_int_bits
        if not np.all(np.isfinite(delta)) or np.abs(delta).max() >= limit:
            raise OverflowError(f"step 3: |δ| = {np.abs(delta).max():g} exceeds the fixed-point "
                                f"bound {limit:g} (delta_int_bits={self.plan.delta_int_bits}); "
                                "lower the learning rate or raise the bound")
        self.delta = self._last_delta = Fixed.encode(delta, self.plan.delta_frac_bits)

    def own_delta(self) -> np.ndarray | None:
        """δ of the last step 3 as this party holds it (quantised, decoded): read-only, its own
        view — what a curious label party keeps for the Gram attack (leak L1)."""
        return None if self._last_delta is None else self._last_delta.decode()

    # step 4b ------------------------------------------------------------------------------
    def keep_encrypted_noise_acc(self, encrypted: EncryptedArray) -> None:
        self.encrypted_noise_acc = encrypted

    def input_gradient(self) -> EncryptedArray:
        """[[δ·Wᵀ]] = δ·W_Bᵀ + δ·[[ε_acc]]ᵀ, re-randomised, at scale δ + W (exact).

        Re-randomising matters: the product's randomness is a function of δ and of the r's of
        the data party's own [[ε_acc]], so without fresh r^n it could test guesses of δ.
        """
        encrypted_part = self.engine.matmul(self.encrypted_noise_acc, self.delta.T).T
        self.encrypted_noise_acc = None
        return self.engine.rerandomize(encrypted_part + self.delta @ self.weight_share.T)

    # step 4 -------------------------------------------------------------------------------
    def masked_gradient(self, rows):
        """[[G']] = [[X]]ᵀ·δ + [[ε_B']], ε_B' fresh and uniform mod n (packed: k features per
        ciphertext, k gradients per plaintext, one ε_B' over each whole plaintext). [[X]] is
        step 0's, at the batch's rows; with a bottom model or packed, this batch's input."""
        inputs = (self.encrypted_features[rows] if self.encrypted_features is not None
                  else self.batch_inputs).T
        self.backward_mask = self.draw_mask((inputs.shape[0], self.delta.shape[1]),
                                            inputs.scale + self.delta.scale)
        # |ΔW| ≤ η·Σ_r |X_rt|·|δ_rj| ≤ η · 2**(x bits) · max_j Σ_r |δ_rj|: the bound's growth.
        column_sums = [sum(abs(int(v)) for v in column) for column in self.delta.values.T.tolist()]
        self.weight_bound_growth = (self.lr_int << (self.plan.x_int_bits + self.plan.x_frac_bits)
                                    ) * max(column_sums, default=0)
        return self.engine.masked_matmul(inputs, self.delta, self.backward_mask)

    def _check_incoming(self, encrypted: EncryptedArray, shape, what: str) -> None:
        """Every ciphertext array the data party sent must have the shape the protocol expects
        (the channel checks declared shapes; this party checks again where it uses them)."""
        if not isinstance(encrypted, EncryptedArray) or tuple(encrypted.shape) != tuple(shape):
            got = getattr(encrypted, "shape", type(encrypted).__name__)
            raise ValueError(f"the data party's {what} has shape {got}, the protocol expects "
                             f"{tuple(shape)}")

    def update_weight_share(self, masked: np.ndarray, batch_size: int) -> None:
        """G̃ = T − ε_B' = Xᵀδ + ε_A; W_B ← W_B − η·G̃ (exact, at W's scale)."""
        gradient = self.unmask(masked, self.backward_mask)
        self.backward_mask = self.delta = None
        if self.public.packing is not None:
            # Every slot holds Xᵀδ + ε_A, below 2**gradient_bits + 2**gradient_mask_bits.
            bound = self.plan.gradient_mask_bits(batch_size) + 1
            gradient = self.public.packing.backward.unpack(gradient, self.layer_sizes[0], axis=0,
                                                           value_bits=bound)
        self.weight_share = self.weight_share - Fixed.from_ints(self.lr_int * gradient,
                                                                self.plan.w_frac_bits)
        self.weight_bound += self.weight_bound_growth

    def finish_epoch(self, epochs_completed: int) -> None:
        self.epochs_completed = epochs_completed
        self.engine.finish_epoch(epochs_completed)  # offline, between epochs

    # prediction ---------------------------------------------------------------------------
    def expect_prediction(self, count) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not (
                1 <= count <= MAX_PREDICTION_ROWS):
            raise ValueError(f"the data party asks to predict {count!r} rows; the label party "
                             f"accepts 1..{MAX_PREDICTION_ROWS} at once")
        self._expected_predictions = count

    def predict_from_preactivation(self) -> None:
        self._expected_predictions = 0
        self.predictions = self.model.scores_from_logits(self.model.forward_top(self.preactivation))

    def classes(self) -> np.ndarray:
        """The predicted class of each row of the last prediction."""
        return self.model.classes_from_scores(self.predictions)

    def prediction(self, class_names: list) -> Prediction:
        """The last prediction, with its class names."""
        scores, class_ids = self.predictions, self.classes()
        if scores.ndim == 1:
            confidence = np.where(class_ids == 1, scores, 1.0 - scores)
        else:
            confidence = scores[np.arange(len(class_ids)), class_ids]
        rule = ""
        if scores.ndim == 1:
            model = self.model
            positive = model.positive_class if model.threshold is not None else 1
            name, other = class_names[positive], class_names[1 - positive]
            rule = (f"{name!r} where P({name}) >= "
                    f"{0.5 if model.threshold is None else model.threshold:g}, else {other!r}")
        return Prediction(class_ids, [class_names[k] for k in class_ids], scores, confidence,
                          list(class_names), rule)
