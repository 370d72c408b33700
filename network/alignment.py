"""The step before step 0: the ids both parties hold, and the public split.

Two parties in two processes hold their rows under ids, and each may hold ids the other does
not. :func:`align_ids` runs over a :class:`transport.SocketChannel` before protocol.setup:

* B → A ``alignment and split`` (public): the way to align (both must choose the same), the
  test fraction and the public seed of the split;
* the ids: by private set intersection (``align="psi"``, the default, psi.py: four messages of
  blinded ids, each declared revealed with what it tells: the intersection and the size of the
  other's id set) or, if both choose it, in the clear (``align="public-ids"``, public: each
  learns all the other's ids);
* both → ``intersection fingerprint`` (public): a SHA-256 of the intersection, so the two
  parties confirm they agree on the same rows, in the same order;
* after the alignment (and, resuming, the agreed epoch), :func:`declare_width`: A → B ``input
  width`` (public), the interactive layer's input width. It comes last because the data party
  may know it only then: its preparation of raw columns (jobs/preparation.py) one-hot encodes
  the categories of its training rows, which the split picks out of the intersection.

Every id list a peer sends is checked before use: a list of at most MAX_IDS strings of at most
MAX_ID_CHARS characters each.
"""

from __future__ import annotations

import numpy as np

from jobs import data
from network import psi
from channel import DATA, LABEL, PUBLIC, REVEALED
from plan import MAX_INPUTS, SEED_LIMIT
from network.wire import TransportError


PSI, PUBLIC_IDS = "psi", "public-ids"
ALIGNMENTS = (PSI, PUBLIC_IDS)
# How many times its own number of ids a party lets the other's PSI set hold (see
# psi_cap): a deviating party can test each id it puts in its set, so the cap is what it
# can learn of ids it does not hold, at most.
PSI_MAX_RATIO = 2.0
MAX_PSI_MAX_RATIO = 1e6
PSI_MAX_RATIO_FLAG = "--psi-max-ratio"


def check_psi_max_ratio(ratio) -> float:
    """A finite ratio in [1, MAX_PSI_MAX_RATIO]; ValueError naming the flag otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or \
            not 1 <= ratio <= MAX_PSI_MAX_RATIO:
        raise ValueError(f"{PSI_MAX_RATIO_FLAG} must be a number in [1, {MAX_PSI_MAX_RATIO:g}], "
                         f"got {ratio!r}")
    return float(ratio)


def psi_cap(own: int, ratio: float) -> int:
    """The most ids this party takes in the other's PSI set: ⌊ratio × own⌋ (and MAX_IDS)."""
    return min(MAX_IDS, int(ratio * own))


def psi_over_cap(other: str, count: int, own: int, ratio: float) -> str:
    """The one line of a refused, too large PSI set: both sizes, the factor, why, what to do."""
    return (f"{other}'s PSI set holds {count:,} ids, more than {ratio:g} × this party's "
            f"{own:,} ({PSI_MAX_RATIO_FLAG} {ratio:g}): a set padded with guessed ids would "
            f"test each of them against this party's ids; if the two sets truly differ that "
            f"much, both parties raise {PSI_MAX_RATIO_FLAG}")

PSI_REASONS = {
    "label ids, blinded": "the label party's ids, each hashed and blinded by its secret "
                          "exponent (DH PSI): the data party learns how many ids the label party "
                          "holds, and after the exchange the intersection",
    "label ids, blinded twice": "the label party's blinded ids raised to the data party's "
                                "secret exponent, in the order received (DH PSI): the label party "
                                "learns which of its own ids the data party holds too",
    "data ids, blinded": "the data party's ids, each hashed and blinded by its secret exponent, "
                         "shuffled (DH PSI): the label party learns how many ids the data party "
                         "holds, and after the exchange the intersection",
    "data ids, blinded twice": "the data party's blinded ids raised to the label party's secret "
                               "exponent, in the order received (DH PSI): the data party learns "
                               "which of its own ids the label party holds too",
}
GROUP_ELEMENT_WIDTH = psi.ELEMENT_BYTES + 1  # bytes per element on the wire, with a sign bit


def check_alignment(align: str) -> str:
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}, got {align!r}")
    return align


class Alignment:
    """What a party brings to the alignment: its ids and the way to align them; at the label
    party also the public split (test fraction, seed), at the data party the interactive
    layer's input width (``n_inputs``, which may be set after the alignment, before
    :func:`declare_width`). Afterwards: ``common`` (the shared ids, sorted as text), ``rows``
    (this party's rows holding them, in that order) and ``n_other_ids``.

    ``align="psi"`` (the default): private set intersection (psi.py); each party learns the
    intersection and the other's number of ids, nothing about an id only the other holds.
    ``align="public-ids"``: each party sends its whole id list in the clear; each learns all of
    the other's ids. Both parties must choose the same; the label party's first message names
    its choice and the data party refuses another. ``psi_max_ratio``: the other's PSI set may
    hold at most that many times this party's number of ids (psi_cap)."""

    mask_source = None  # it draws no masks

    def __init__(self, ids, *, align: str = PSI, test_fraction=None, seed=None, n_inputs=None,
                 psi_max_ratio: float = PSI_MAX_RATIO):
        self.keys = [str(value) for value in ids]
        if not self.keys:
            raise data.DataError("no ids to align: this party's file holds no rows")
        data.common_rows(self.keys, ())  # refuses a duplicate id before anything is sent
        self.align = check_alignment(align)
        self.psi_max_ratio = check_psi_max_ratio(psi_max_ratio)
        self.test_fraction, self.seed, self.n_inputs = test_fraction, seed, n_inputs
        self.common: list[str] = []
        self.rows = np.zeros(0, dtype=np.int64)
        self.n_other_ids = 0
        self.side = None  # the psi.LabelSide or psi.DataSide, with align="psi"

    # -- what the label party says first, and the data party's answer ------------------------
    def plan(self) -> dict:
        return {"align": self.align, "test_fraction": self.test_fraction, "seed": self.seed}

    def take_plan(self, plan) -> None:
        if not isinstance(plan, dict) or set(plan) != {"align", "test_fraction", "seed"}:
            raise TransportError("the label party's alignment message needs exactly align, "
                                 "test_fraction and seed")
        if plan["align"] != self.align:
            raise ValueError(f"the label party aligns the ids by {plan['align']!r}, this party "
                             f"by {self.align!r}: both must choose the same (--align)")
        data.check_split(plan["test_fraction"], plan["seed"])
        if plan["seed"] >= SEED_LIMIT:
            raise TransportError(f"the label party's seed {plan['seed']} is not below 2**63")
        self.test_fraction, self.seed = plan["test_fraction"], plan["seed"]

    def take_width(self, width) -> None:
        if not isinstance(width, dict) or set(width) != {"n_inputs"}:
            raise TransportError("the data party's input width message needs exactly n_inputs")
        n_inputs = width["n_inputs"]
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or not \
                1 <= n_inputs <= MAX_INPUTS:
            raise TransportError(f"the data party declares {n_inputs!r} inputs; the cap is "
                                 f"1..{MAX_INPUTS:,}")
        self.n_inputs = n_inputs

    # -- the outcome -------------------------------------------------------------------------
    def settle(self, own_common_keys, n_other_ids: int) -> None:
        """The shared ids (of this party's own, as text) in the joint order: sorted as text."""
        self.common, self.rows = data.common_rows(self.keys, own_common_keys)
        self.n_other_ids = n_other_ids

    def take_public_ids(self, ids) -> None:
        check_id_list(ids, "the other party's ids")
        self.settle(ids, len(ids))

    def settle_psi(self) -> None:
        self.settle([self.keys[row] for row in self.side.rows], self.side.their_count)

    def take_fingerprint(self, fingerprint) -> None:
        if fingerprint != self.side.fingerprint:
            raise ValueError("the two parties' intersections differ (their fingerprints do not "
                             "match): refusing to train on rows that may not be the same people")


MAX_IDS = 10 ** 7  # ids in one alignment message (plan.MAX_SAMPLES rows at most are trained)
MAX_ID_CHARS = 1024  # characters in one id


def check_id_list(ids, what: str) -> None:
    """A peer's id list: a JSON list of at most MAX_IDS strings of at most MAX_ID_CHARS each."""
    if not isinstance(ids, list):
        raise TransportError(f"{what} are not a list, got {type(ids).__name__}")
    if len(ids) > MAX_IDS:
        raise TransportError(f"{what}: {len(ids):,} ids, more than the cap of {MAX_IDS:,}")
    for position, key in enumerate(ids):
        if not isinstance(key, str) or len(key) > MAX_ID_CHARS:
            raise TransportError(f"{what}: entry {position} is not a string of at most "
                                 f"{MAX_ID_CHARS} characters: {str(key)[:40]!r}")


def align_ids(channel) -> None:
    """Before step 0: each party learns the ids both hold (``common``, sorted as text) and its
    own rows holding them (``rows``), and the data party the public split.

    B → A ``alignment and split`` (public: the way to align, test fraction, seed); then the
    ids, by private set intersection or in the clear (:func:`align_by_psi`,
    :func:`align_by_public_ids`). The data party's input width follows later
    (:func:`declare_width`)."""
    channel.send("align", LABEL, DATA, "alignment and split", PUBLIC,
                 make=lambda label: label.plan(), take=lambda ids, plan: ids.take_plan(plan))
    here = channel.local[channel.role]
    (align_by_psi if here.align == PSI else align_by_public_ids)(channel)
    if not here.common:
        raise data.DataError("no id is shared by this party's file and the other party's")


def declare_width(channel) -> None:
    """A → B ``input width`` (public): the interactive layer's input width (d, or k with a
    bottom model), which the data party sets on its Alignment (``n_inputs``) once it knows it —
    after the alignment and the split, when its preparation is fitted on its training rows. The
    label party builds its network over it; nothing else of the preparation crosses."""
    channel.send("align", DATA, LABEL, "input width", PUBLIC,
                 make=lambda ids: {"n_inputs": ids.n_inputs},
                 take=lambda label, width: label.take_width(width))


def align_by_public_ids(channel) -> None:
    """B → A ``ids`` (public), A → B ``ids`` (public): each learns ALL of the other's ids."""
    channel.send("align", LABEL, DATA, "ids", PUBLIC, make=lambda label: label.keys,
                 take=lambda ids, keys: ids.take_public_ids(keys))
    channel.send("align", DATA, LABEL, "ids", PUBLIC, make=lambda ids: ids.keys,
                 take=lambda label, keys: label.take_public_ids(keys))


def align_by_psi(channel) -> None:
    """Diffie–Hellman private set intersection (psi.py), four revealed messages and two public
    fingerprints of the intersection, which each party compares with its own:

        B → A  label ids, blinded          [H(b)^β], shuffled
        A → B  label ids, blinded twice    [H(b)^βα], in the order received
        A → B  data ids, blinded           [H(a)^α], shuffled
        B → A  data ids, blinded twice     [H(a)^αβ], in the order received
        A → B  intersection fingerprint    sha256 of the sorted H(x)^αβ both hold
        B → A  intersection fingerprint

    Each list is checked for its length and width before it is read (expect_integers): the
    other's set may hold at most psi_cap ids (``psi_max_ratio`` times this party's, default
    PSI_MAX_RATIO), a padded one is refused before any exponentiation of it. The data party
    checks first (message 1), so a padded label set is refused before the data party's ids
    leave; a padded data set is refused by the label party before message 4, without which the
    data party learns nothing of the intersection."""
    here = channel.local[channel.role]
    side_type = psi.LabelSide if channel.role == LABEL else psi.DataSide
    here.side = side_type(here.keys)  # blinds this party's ids (duplicates: refused before)
    own, ratio = len(here.keys), here.psi_max_ratio
    other = "the data party" if channel.role == LABEL else "the label party"
    theirs, twice = (("data ids, blinded", "label ids, blinded twice") if channel.role == LABEL
                     else ("label ids, blinded", "data ids, blinded twice"))
    channel.expect_integers(twice, count=own, max_width=GROUP_ELEMENT_WIDTH)
    by_ratio = ratio * own < MAX_IDS  # else the absolute cap binds, and says so itself
    channel.expect_integers(theirs, max_count=psi_cap(own, ratio), max_width=GROUP_ELEMENT_WIDTH,
                            over_cap=(lambda count: psi_over_cap(other, count, own, ratio))
                            if by_ratio else None)
    answers = {}

    def send(sender, receiver, name, make, take):
        channel.send("align", sender, receiver, name, REVEALED, make=make, take=take,
                     reason=PSI_REASONS[name])

    def answer_first(ids, first):
        answers["twice"], answers["blinded"] = ids.side.answer(first)

    def keep(name):
        return lambda label, values: answers.__setitem__(name, values)

    def answer_second(label, blinded):
        answers["fourth"] = label.side.answer(answers["twice"], blinded)
        label.settle_psi()

    def finish(ids, fourth):
        ids.side.finish(fourth)
        ids.settle_psi()

    send(LABEL, DATA, "label ids, blinded", lambda label: label.side.first_message(),
         answer_first)
    send(DATA, LABEL, "label ids, blinded twice", lambda ids: answers["twice"], keep("twice"))
    send(DATA, LABEL, "data ids, blinded", lambda ids: answers["blinded"], answer_second)
    send(LABEL, DATA, "data ids, blinded twice", lambda label: answers["fourth"], finish)
    for sender, receiver in ((DATA, LABEL), (LABEL, DATA)):
        channel.send("align", sender, receiver, "intersection fingerprint", PUBLIC,
                     make=lambda party: party.side.fingerprint,
                     take=lambda party, fingerprint: party.take_fingerprint(fingerprint))
