"""The ACML protocol (Zhang & Zhu, arXiv 2007.06849), as a script: step 0, then per mini-batch
steps 1, 2, 3, 4b and 4 in the order they run, then prediction.

Two parties train one MLP together:

* the **data party** (A) holds the features X, the Paillier key pair, and ``noise_acc`` (ε_acc);
* the **label party** (B) holds the labels y, A's public key, the ``weight_share``
  W_B = W − ε_acc of the first layer, the first layer's bias b, and every layer above it.

Invariant, after every step: ``weight_share + noise_acc == W`` exactly, where W is the weight that
plain SGD would hold. Neither party ever holds W.

How to read it. Every message is one ``channel.send(step, sender, receiver, name, kind, ...)``:
``make`` is what the sender computes (run only where the sender lives), ``take`` what the
receiver does with it (run only where the receiver lives); ``shape``, ``mask_bits`` and
``value_bits`` are plain values, from public facts, that both sides check (channel.py);
``stream=True`` lets a big ciphertext array cross in row blocks, so that in two processes the
receiver decrypts the first while the sender computes the rest (the same array either way; the
sender's engine decides, speed/engine.py; its masks are drawn in full before the first block). Work
that crosses nothing is ``channel.at(party, ...)``. The script itself reads only :class:`Public`
(plan.py): facts both processes hold after step 0. So the very same script runs with both
parties in one process (``channel.Channel``) or each in its own (``transport.SocketChannel``).

Kinds: ``ciphertext`` (under A's key), ``masked`` (a uniform mask the receiver does not know, σ
bits wider than the value), ``revealed`` (by design, with the reason), ``public``.

What each party learns from ONE message is declared with it. What a party learns from many —
z across epochs gives the label party X·Xᵀ; step 4b gives the data party label information; a
party that deviates from the script learns more — is measured by ``python acml.py audit``.
Threat model: semi-honest, non-colluding parties.
"""

from __future__ import annotations

from dataclasses import replace

from channel import CIPHERTEXT, DATA, LABEL, MASKED, PUBLIC, REVEALED
from plan import Public, TrainingPlan

STARTS = ("new", "resume", "predict")  # a new run; a run resumed from both checkpoints; or
# prediction with both checkpoints (no training: no weight split, no [[X]] of training rows)


# ----------------------------------------------------------------------------------------------
# Step 0 — setup: the public key, the shapes, the training plan, the weight split, [[X]] once
# ----------------------------------------------------------------------------------------------
def setup(channel, *, start: str = "new") -> Public:
    """Step 0. Returns the public facts both parties hold from here on.

    * A → B ``public key`` (public): n. Restored (``start`` "resume" or "predict"), B checks it
      is the key its weight share was made under.
    * A → B ``shapes`` (public): rows, the interactive layer's input width, whether A has a
      bottom model, and A's INSECURE teaching switches, if any. B checks them.
    * B → A ``training plan`` (public): first-layer width, activation, η, batch size, epochs,
      seed, fixed-point plan, and the epochs completed (restored: A checks it against its own
      checkpoint, and that nothing but the epoch count changed).
    * A → B ``W0 − ε_acc`` (masked), new runs only: A draws W0, keeps ε_acc uniform and σ bits
      wider than W0 (so never zero), and sends the difference. B learns nothing about W0.
    * B → A ``packing layout`` (public): the slots of steps 1 and 4, or none; A derives the
      same from the public facts and refuses any other (plan.PackingLayout).
    * A → B ``[[X]]`` (ciphertext), training only and without a bottom model: every training row
      once, a fresh r for each value, cached for every epoch (packed: k features per ciphertext).
    * A → B ``[[X_blocks]]`` (ciphertext), only when the plan batches row blocks and packs:
      each block's rows packed along the rows, one ciphertext per block and feature, kept for
      every epoch's step 1. B learns nothing new: which rows form a block is public.
    """
    if start not in STARTS:
        raise ValueError(f"setup's start must be one of {STARTS}, got {start!r}")
    with channel.timed("0"):
        public_key = channel.send(0, DATA, LABEL, "public key", PUBLIC,
                                  make=lambda data: data.public_key,
                                  take=lambda label, key: label.accept_public_key(key, start))
        shapes = channel.send(0, DATA, LABEL, "shapes", PUBLIC,
                              make=lambda data: data.shapes(start),
                              take=lambda label, shapes: label.check_shapes(shapes, start))
        training = channel.send(0, LABEL, DATA, "training plan", PUBLIC,
                                make=lambda label: label.training_plan().to_dict(),
                                take=lambda data, plan: data.accept_training_plan(plan, start))
        public = Public(public_key, shapes["n_samples"], shapes["n_inputs"], shapes["bottom"],
                        tuple(shapes["insecure_flaws"]), TrainingPlan.from_dict(training))
        if start == "new":
            channel.send(0, DATA, LABEL, "W0 − ε_acc", MASKED,
                         make=lambda data: data.split_initial_weight(),
                         take=lambda label, share: label.accept_weight_share(share),
                         shape=public.weight_shape(), mask_bits=public.plan.noise_acc_bits(),
                         value_bits=public.plan.weight_bits)
        layout = channel.send(0, LABEL, DATA, "packing layout", PUBLIC,
                              make=lambda label: label.propose_packing(public),
                              take=lambda data, proposed: data.check_packing(public, proposed))
        public = replace(public, packing=None if layout is None else public.derive_packing())
        channel.at(DATA, lambda data: data.begin(public))
        channel.at(LABEL, lambda label: label.begin(public))
        if start != "predict" and not public.bottom:
            channel.send(0, DATA, LABEL, "[[X]]", CIPHERTEXT,
                         make=lambda data: data.encrypt_features(),
                         take=lambda label, encrypted: label.keep_encrypted_features(encrypted),
                         shape=public.features_shape())
        if start != "predict" and public.encrypts_blocks():
            channel.send(0, DATA, LABEL, "[[X_blocks]]", CIPHERTEXT,
                         make=lambda data: data.encrypt_rows(public.rows_by_block()),
                         take=lambda label, encrypted: label.keep_encrypted_blocks(encrypted),
                         shape=public.blocks_shape())
    return public


# ----------------------------------------------------------------------------------------------
# Step 1 — forward through the first (interactive) layer. Encrypted, then masked.
# ----------------------------------------------------------------------------------------------
Z_REASON = ("the first layer's pre-activation z = X·W + b, once the label party removes its "
            "own mask ε_B")


def step1_forward_interactive(channel, public: Public, rows) -> None:
    """Step 1: z = X·W + b reaches the label party; neither party sees the other's share.

    0. The batch's encrypted input at B. The paper's path: both parties pick the batch's rows of
       step 0's [[X]] (the batch order is public), or with row blocks its blocks of
       [[X_blocks]]. With a bottom model instead, A → B ``[[α]]`` (ciphertext), α =
       bottom(X[rows]), encrypted afresh every batch; packed without row blocks, A → B
       ``[[X_batch]]`` (ciphertext), the batch's rows k per ciphertext.
    1. B computes [[U]] = [[X]]·W_B + [[ε_B]] with a fresh ε_B, uniform mod n, and sends
       B → A ``[[X·W_B + ε_B]]`` (ciphertext). A decrypts U: ε_B hides X·W_B from it.
    2. A → B ``X·W + ε_B`` = U + X·ε_acc (revealed): B removes ε_B and adds b, and so learns
       z = X·W + b, by design.
    """
    m = len(rows)
    with channel.timed("1"):
        if not public.encrypts_each_batch():  # the paper's [[X]], cached in step 0
            channel.at(DATA, lambda data: data.select_rows(rows))
            channel.at(LABEL, lambda label: label.select_rows(rows))
        elif public.bottom:
            channel.send(1, DATA, LABEL, "[[α]]", CIPHERTEXT,
                         make=lambda data: data.encrypt_bottom_output(rows),
                         take=lambda label, encrypted: label.keep_batch_inputs(encrypted),
                         shape=public.rows_shape(m))
        else:
            channel.send(1, DATA, LABEL, "[[X_batch]]", CIPHERTEXT,
                         make=lambda data: data.encrypt_rows(rows),
                         take=lambda label, encrypted: label.keep_batch_inputs(encrypted),
                         shape=public.rows_shape(m))
        first_layer_forward(channel, public, "1", m, Z_REASON)


def first_layer_forward(channel, public: Public, step: str, m: int, reason: str) -> None:
    """Messages 1 and 2 of step 1, shared with prediction: [[X·W_B + ε_B]], then X·W + ε_B."""
    channel.send(step, LABEL, DATA, "[[X·W_B + ε_B]]", CIPHERTEXT,
                 make=lambda label: label.masked_product(m),
                 take=lambda data, encrypted: data.decrypt_masked_product(encrypted),
                 shape=public.product_shape(m), mask_bits=public.mask_bits,
                 value_bits=public.product_bits(), stream=True)
    channel.send(step, DATA, LABEL, "X·W + ε_B", REVEALED,
                 make=lambda data: data.add_own_part(),
                 take=lambda label, noisy: label.unmask_preactivation(noisy, m),
                 shape=public.product_shape(m), reason=reason)


# ----------------------------------------------------------------------------------------------
# Steps 2 and 3 — forward and backward through the rest, at the label party. Nothing crosses.
# ----------------------------------------------------------------------------------------------
def step2_forward_rest(channel, rows) -> None:
    """Step 2: a = act(z), the layers above, and the loss against y — all at B, in plaintext."""
    with channel.timed("2"):
        channel.at(LABEL, lambda label: label.forward_rest(rows))


def step3_backward_rest(channel) -> None:
    """Step 3: δ = ∂L/∂z; B updates the layers above and the first layer's bias."""
    with channel.timed("3"):
        channel.at(LABEL, lambda label: label.backward_rest())


# ----------------------------------------------------------------------------------------------
# Step 4b — only with a bottom model: the input gradient ∂L/∂α = δ·Wᵀ to the data party
# ----------------------------------------------------------------------------------------------
INPUT_GRADIENT_REASON = ("∂L/∂α = δ·Wᵀ, the bottom model's input gradient: a known leak of LABEL "
                         "information to the data party (its rows' norms and directions separate "
                         "the classes); measured by `python acml.py audit`")


def step4b_input_gradient(channel, public: Public, m: int) -> None:
    """Step 4b: A gets ∂L/∂α = δ·Wᵀ and takes a plain SGD step on its bottom model.

    1. A → B ``[[ε_acc]]`` (ciphertext, fresh r).
    2. B computes [[δ·(W_B + ε_acc)ᵀ]] = δ·W_Bᵀ + δ·[[ε_acc]]ᵀ = [[δ·Wᵀ]], re-randomises it, and
       sends B → A ``[[δ·Wᵀ]]`` (ciphertext, declared revealed: the label leak, by design).
       A decrypts δ_int·W_intᵀ exactly and steps its bottom model.

    It runs after step 3 and BEFORE step 4's update: W_B and ε_acc must still be the shares that
    computed z. INSECURE flaw ``plaintext_input_gradient`` sends the same ciphertext with nothing
    declared, as FATE 1.x does (issue #2915).
    """
    reason = None if public.flawed("plaintext_input_gradient") else INPUT_GRADIENT_REASON
    with channel.timed("4b"):
        channel.send("4b", DATA, LABEL, "[[ε_acc]]", CIPHERTEXT,
                     make=lambda data: data.encrypt_noise_acc(),
                     take=lambda label, encrypted: label.keep_encrypted_noise_acc(encrypted),
                     shape=public.weight_shape())
        channel.send("4b", LABEL, DATA, "[[δ·Wᵀ]]", CIPHERTEXT,
                     make=lambda label: label.input_gradient(),
                     take=lambda data, encrypted: data.update_bottom(encrypted),
                     shape=(m, public.n_inputs), reason=reason)


# ----------------------------------------------------------------------------------------------
# Step 4 — backward through the first layer. Encrypted, then masked.
# ----------------------------------------------------------------------------------------------
def step4_backward_interactive(channel, public: Public, rows) -> None:
    """Step 4: W_B ← W_B − η·(Xᵀδ + ε_A) and ε_acc ← ε_acc + η·ε_A, so W_B + ε_acc = W − η·Xᵀδ.

    1. B → A ``[[Xᵀδ + ε_B']]`` (ciphertext): A decrypts G'; ε_B' hides Xᵀδ from it.
    2. A draws ε_A, σ bits wider than Xᵀδ, folds η·ε_A into ε_acc, and sends
       A → B ``Xᵀδ + ε_B' + ε_A`` (masked). B removes ε_B': G̃ = Xᵀδ + ε_A, which hides Xᵀδ,
       and updates W_B ← W_B − η·G̃ (exact, at W's scale).
    """
    plan, m = public.plan, len(rows)
    with channel.timed("4"):
        channel.send(4, LABEL, DATA, "[[Xᵀδ + ε_B']]", CIPHERTEXT,
                     make=lambda label: label.masked_gradient(rows),
                     take=lambda data, encrypted: data.decrypt_masked_gradient(encrypted),
                     shape=public.gradient_shape(), mask_bits=public.mask_bits,
                     value_bits=public.masked_gradient_bits(m), stream=True)
        # Packed or not, every value B can read out of it hides one gradient under its own ε_A.
        channel.send(4, DATA, LABEL, "Xᵀδ + ε_B' + ε_A", MASKED,
                     make=lambda data: data.mask_gradient(m),
                     take=lambda label, masked: label.update_weight_share(masked, m),
                     shape=public.gradient_shape(), mask_bits=plan.gradient_mask_bits(m),
                     value_bits=plan.gradient_bits(m))


# ----------------------------------------------------------------------------------------------
# One mini-batch, one epoch, the epochs; and prediction
# ----------------------------------------------------------------------------------------------
def train_batch(channel, public: Public, rows) -> None:
    """Steps 1, 2, 3, 4b (with a bottom model) and 4 on one mini-batch. The label party keeps
    the batch's loss (``label_party.losses``)."""
    step1_forward_interactive(channel, public, rows)
    step2_forward_rest(channel, rows)
    step3_backward_rest(channel)
    if public.bottom:
        step4b_input_gradient(channel, public, len(rows))
    step4_backward_interactive(channel, public, rows)


def train_epoch(channel, public: Public, epoch: int, *, before_batch=None,
                after_batch=None) -> None:
    """Every mini-batch of one epoch, in the order both parties derive from the public seed.
    ``before_batch(rows)`` and ``after_batch(rows)`` let a caller watch (progress, the audit)."""
    for rows in public.batches(epoch):
        if before_batch is not None:
            before_batch(rows)
        train_batch(channel, public, rows)
        if after_batch is not None:
            after_batch(rows)


def train(channel, public: Public, *, after_epoch=None, **watch) -> None:
    """The epochs of the training plan, from the epochs completed (0, or resumed) on.
    ``after_epoch(epochs_completed)`` runs after each: each party saves its own checkpoint."""
    for epoch in range(public.training.epochs_completed, public.training.epochs):
        train_epoch(channel, public, epoch, **watch)
        channel.at(DATA, lambda data: data.finish_epoch(epoch + 1))
        channel.at(LABEL, lambda label: label.finish_epoch(epoch + 1))
        if after_epoch is not None:
            after_epoch(epoch + 1)


PREDICTION_REASON = ("the pre-activation z of the rows to predict: with d + 2 of those rows "
                     "known, or W, it gives the rows themselves (leak L5)")
IDS_TO_PREDICT_REASON = ("which ids are being scored: the label party writes the predictions "
                         "keyed by id, so it must learn them; with leak L5 it also learns each "
                         "id's z, and so its row")


def predict(channel, public: Public) -> None:
    """Prediction: step 1 on new rows (freshly encrypted), then step 2's forward at B.

    A → B ``rows to predict`` (public): their number; A → B ``[[X_new]]`` (ciphertext, packed
    along the rows as in step 1; with a bottom model [[bottom(X_new)]]); then step 1's two
    messages. The scores end at the label party (``label_party.predictions``).

    Leak L5: B learns z_new = X_new·W + b of every row it scores, as in step 1; with d + 2 of
    those rows known (or W, after an export, or W rebuilt from its training view with L1) it
    computes X_new = (z_new − b)·W⁺. No input gradient is sent (no step 4b): predicting with a
    bottom model needs no consent from the label party.
    """
    with channel.timed("predict"):
        m = channel.send("predict", DATA, LABEL, "rows to predict", PUBLIC,
                         make=lambda data: data.prediction_count(),
                         take=lambda label, count: label.expect_prediction(count))
        channel.send("predict", DATA, LABEL, "[[X_new]]", CIPHERTEXT,
                     make=lambda data: data.encrypt_rows_to_predict(),
                     take=lambda label, encrypted: label.keep_batch_inputs(encrypted),
                     shape=public.rows_shape(m))
        first_layer_forward(channel, public, "predict", m, PREDICTION_REASON)
        channel.at(LABEL, lambda label: label.predict_from_preactivation())
