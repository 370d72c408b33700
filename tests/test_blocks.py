"""Row blocks (``block_rows``): batches made of whole fixed row blocks, so
that the data party encrypts each block once at setup and step 1 sends no [[X_batch]]. The
weights must stay exactly those of the same batch order without encryption. Small keys."""

import numpy as np
import pytest
from conftest import insecure_keypair, one_line_error

import acml
from jobs import checkpoint
import nn
from plan import TrainingPlan, FixedPointPlan
from test_protocol import fixed_point_reference, small_split

KEY_BITS = 512  # 4 rows per packed ciphertext of step 1 with this plan and batch size
BLOCK_ROWS = 4


@pytest.fixture(scope="module")
def keypair():
    return insecure_keypair(KEY_BITS)


def config(**overrides):
    base = dict(hidden=(4,), activation="relu", epochs=2, batch_size=16, lr=0.1,
                key_bits=KEY_BITS, allow_insecure=True, init_seed=0, block_rows=BLOCK_ROWS)
    base.update(overrides)
    return acml.Config(**base)


@pytest.fixture(scope="module")
def block_run(keypair):
    """90 training rows: 22 full blocks of 4 and a short block of 2, in batches of 4 blocks."""
    train_set, test_set = small_split("breast_cancer", 120)
    cfg = config()
    return train_set, cfg, acml.train(train_set, test_set, cfg, keypair=keypair)


# -- the batch order ---------------------------------------------------------------------------
def test_block_batches_cover_every_row_once_in_the_same_blocks_every_epoch():
    """Each epoch's batches hold every row exactly once; every batch is whole blocks of the
    fixed partition (the same blocks in every epoch), the short block last; only the order
    of the blocks changes between epochs."""
    n, batch_size, b = 50, 16, 4
    blocks = nn.row_blocks(n, b, seed=3)
    assert [len(block) for block in blocks] == [4] * 12 + [2]
    key = {tuple(block): index for index, block in enumerate(blocks)}
    orders = []
    for epoch in range(3):
        batches = nn.block_minibatches(n, batch_size, b, seed=3, epoch=epoch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        assert [len(rows) for rows in batches] == [16, 16, 16, 2]
        order = [key[tuple(rows[start:start + b])] for rows in batches
                 for start in range(0, len(rows), b)]
        assert order[-1] == 12
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    assert nn.minibatches(n, batch_size, seed=3, epoch=1, block_rows=b)[0].tolist() == \
        nn.block_minibatches(n, batch_size, b, seed=3, epoch=1)[0].tolist()


@pytest.mark.parametrize("batch_size,block_rows,needle", [(16, 5, "multiple"),
                                                          (16, 0, "block_rows"),
                                                          (16, -2, "block_rows")])
def test_block_batches_refuse_bad_sizes(batch_size, block_rows, needle):
    """A batch that is not a whole number of blocks, or a block size below 1: ValueError."""
    with pytest.raises(ValueError, match=needle):
        nn.block_minibatches(50, batch_size, block_rows, seed=0, epoch=0)


# -- exactness ---------------------------------------------------------------------------------
def test_block_batches_are_bit_identical_to_the_fixed_point_reference(block_run):
    """Exactness with row blocks: W_B + ε_acc equals the unencrypted fixed-point run on the
    same block batches integer for integer, and the layers above bit for bit."""
    train_set, cfg, result = block_run
    *_, (weight, top) = fixed_point_reference(train_set, cfg)
    joint = result.label_party.weight_share + result.data_party.noise_acc
    assert np.array_equal(joint.values, weight.values)
    for mine, theirs in zip(result.label_party.model.layers, top.layers):
        assert np.array_equal(mine.b, theirs.b)
    assert result.label_party.public.packing.forward.slots == BLOCK_ROWS


def test_block_batches_match_the_plaintext_twin_within_quantisation(block_run):
    """acml.train's plaintext twin follows the block order too: every weight within the
    fixed-point bound of the float64 twin, identical predictions (a twin on row batches would
    differ far beyond the bound: the order is not the row shuffle's)."""
    train_set, cfg, result = block_run
    assert result.metrics["max_abs_weight_diff"] < 1e-5
    assert result.metrics["prediction_agreement"] == 1.0
    assert np.allclose(result.losses, result.plaintext_losses, rtol=0, atol=2.0 ** -14)
    rows_first = nn.minibatches(len(train_set.y), cfg.batch_size, seed=cfg.seed, epoch=0)[0]
    blocks_first = result.label_party.public.batches(0)[0]
    assert not np.array_equal(rows_first, blocks_first)


# -- the messages and the randomness -----------------------------------------------------------
def test_step0_sends_x_blocks_once_and_step1_no_x_batch(block_run, keypair):
    """With row blocks, step 0 carries one [[X_blocks]] (one ciphertext per block and feature)
    and step 1 no [[X_batch]]; without them, step 1 sends one [[X_batch]] per batch."""
    train_set, cfg, result = block_run
    by_step = {(row["step"], row["name"]): row for row in result.channel.report()}
    assert by_step["0", "[[X_blocks]]"]["count"] == 1
    assert ("1", "[[X_batch]]") not in by_step
    blocks = next(m for m in result.channel.messages if m.name == "[[X_blocks]]")
    assert tuple(blocks.shape) == (-(-len(train_set.y) // BLOCK_ROWS), train_set.X.shape[1])
    n_batches = -(-len(train_set.y) // cfg.batch_size) * cfg.epochs
    assert by_step["1", "[[X·W_B + ε_B]]"]["count"] == n_batches
    rows = acml.train(train_set, None, config(block_rows=0), keypair=keypair)
    by_step = {(row["step"], row["name"]): row for row in rows.channel.report()}
    assert by_step["1", "[[X_batch]]"]["count"] == n_batches
    assert ("0", "[[X_blocks]]") not in by_step


def test_data_party_needs_no_randomizers_per_epoch_with_row_blocks(block_run, keypair):
    """The data party's pool: step 0 takes [[X]] and [[X_blocks]]; the epochs take none (no
    step-1 encryption is left), and nothing was computed online or left over."""
    train_set, cfg, _ = block_run
    result = acml.train(train_set, None, cfg, keypair=keypair)  # no prediction after it
    pool, public = result.data_party.engine.randomizer_pool, result.data_party.public
    assert [pool.need(epoch) for epoch in range(cfg.epochs)] == [0] * cfg.epochs
    n_blocks = -(-len(train_set.y) // BLOCK_ROWS)
    assert pool.step0_count == (np.prod(public.features_shape())
                                + n_blocks * train_set.X.shape[1])
    assert pool.shortfall == 0 and len(pool) == 0 and pool.filled == pool.step0_count


# -- the plan, the checkpoints and the command line --------------------------------------------
def test_training_plan_carries_block_rows_and_an_old_plan_means_row_batches():
    """block_rows crosses in the training plan, validated; a plan without the field (an older
    peer or checkpoint) means row batches (0)."""
    plan = TrainingPlan(4, "relu", 0.1, 16, 2, 0, FixedPointPlan(), block_rows=4)
    assert TrainingPlan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    del old["block_rows"]
    assert TrainingPlan.from_dict(old).block_rows == 0
    for bad, needle in ((5, "multiple"), (-1, "block_rows"), (True, "block_rows"),
                        (10 ** 6, "block_rows")):
        with pytest.raises(ValueError, match=needle):
            TrainingPlan.from_dict({**plan.to_dict(), "block_rows": bad})


def test_checkpoints_without_block_rows_load_as_row_batches(block_run, tmp_path):
    """A checkpoint written before block_rows existed loads at both parties as block_rows 0;
    one written with blocks keeps its block_rows."""
    _, _, result = block_run
    data_state = checkpoint.DataPartyState.of(result.data_party, epochs_completed=2)
    label_state = checkpoint.LabelPartyState.of(result.label_party, epochs_completed=2)
    for state, loader, name in ((data_state, checkpoint.DataPartyState, "data.npz"),
                                (label_state, checkpoint.LabelPartyState, "label.npz")):
        state.save(tmp_path / name)
        assert loader.load(tmp_path / name, allow_insecure=True).training["block_rows"] == 4
        del state.training["block_rows"]
        state.save(tmp_path / f"old_{name}")
        assert loader.load(tmp_path / f"old_{name}",
                           allow_insecure=True).training["block_rows"] == 0


@pytest.mark.parametrize("extra,needle", [
    (["--block-rows", "-1"], "--block-rows: must be an integer in 0..256"),
    (["--block-rows", "5"], "--batch-size 16 must be a multiple"),
    (["--block-rows", "8"], "block_rows 8 exceeds the 4 rows one packed ciphertext"),
])
def test_cli_bad_block_rows_is_one_line(extra, needle, capsys):
    """Bad --block-rows: one line, exit code 2 — below 0, not dividing the batch size, or
    (known once the key is) more rows than one packed ciphertext holds."""
    line = one_line_error(capsys, ["train", "--dataset", "wine", "--hidden", "3", "--epochs",
                                   "1", "--batch-size", "16", "--key-bits", str(KEY_BITS),
                                   "--insecure-small-key", "--quiet", *extra])
    assert needle in line


def test_cli_party_label_refuses_a_block_size_that_does_not_divide_the_batch(capsys):
    """`party label` checks --block-rows against --batch-size before it connects."""
    line = one_line_error(capsys, ["party", "label", "--connect", "127.0.0.1:9", "--labels",
                                   "y.csv", "--id-column", "id", "--label-column", "y",
                                   "--token-file", "t", "--batch-size", "16",
                                   "--block-rows", "3", "--quiet"])
    assert "--block-rows 3" in line
