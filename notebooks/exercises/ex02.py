"""Checks for notebook 02 (an MLP with manual backpropagation). Each recomputes what it compares
against and prints only ✓ or ✗ (with a hint that does not contain the answer)."""

import numpy as np

from . import answered, verdict


def _random_problem(rng, shape=(5, 3)):
    W = rng.normal(size=shape)
    epsilon = rng.uniform(-1e3, 1e3, size=shape)
    return W, epsilon


def check_1(update_shares):
    """update_shares(W_B, epsilon, masked_gradient, epsilon_A, lr) -> (W_B_new, epsilon_new):
    the label party updates W_B from what it receives, masked_gradient = g + ε_A; the data party
    updates ε from its own ε_A. Their sum must be the plain SGD step W − lr·g, and the label
    party's update must not depend on ε_A except through g + ε_A."""
    if not answered(update_shares):
        return False
    if not callable(update_shares):
        return verdict(False, "give a function update_shares(W_B, epsilon, masked_gradient, "
                              "epsilon_A, lr)")
    rng = np.random.default_rng()      # public test data: no secret here
    W, epsilon = _random_problem(rng)
    W_B, g = W - epsilon, rng.normal(size=W.shape)
    epsilon_A, lr = rng.uniform(-1e3, 1e3, size=W.shape), 0.1
    try:
        W_B_new, epsilon_new = update_shares(W_B.copy(), epsilon.copy(), g + epsilon_A,
                                             epsilon_A.copy(), lr)
        other_mask = rng.uniform(-1e3, 1e3, size=W.shape)
        W_B_other, _ = update_shares(W_B.copy(), epsilon.copy(), g + epsilon_A, other_mask, lr)
    except Exception as error:
        return verdict(False, f"update_shares raised {type(error).__name__}: {error}")
    if np.shape(W_B_new) != W.shape or np.shape(epsilon_new) != W.shape:
        return verdict(False, "wrong shape")
    if not np.allclose(np.asarray(W_B_new) + np.asarray(epsilon_new), W - lr * g, rtol=0, atol=1e-8):
        return verdict(False, "the two shares do not add up to the plain SGD step")
    if not np.allclose(W_B_new, W_B_other, rtol=0, atol=1e-12):
        return verdict(False, "the label party's new share uses ε_A itself, which it never sees")
    return verdict(True)


def check_2(momentum_step):
    """momentum_step(state, masked_gradient, epsilon_A, lr, mu) -> state, with state the dict
    {"W_B", "epsilon", "v_B", "v_A"}: the label party updates v_B and W_B from masked_gradient
    = g + ε_A alone, the data party v_A and ε from ε_A alone. Over 20 steps W_B + ε must follow
    plain momentum (v ← μv + g, W ← W − lr·v)."""
    if not answered(momentum_step):
        return False
    if not callable(momentum_step):
        return verdict(False, "give a function momentum_step(state, masked_gradient, epsilon_A, "
                              "lr, mu)")
    rng = np.random.default_rng()
    W, epsilon = _random_problem(rng)
    lr, mu = 0.1, 0.9
    state = {"W_B": W - epsilon, "epsilon": epsilon, "v_B": np.zeros_like(W), "v_A": np.zeros_like(W)}
    v = np.zeros_like(W)
    try:
        for _ in range(20):
            g = rng.normal(size=W.shape)
            epsilon_A = rng.uniform(-1e3, 1e3, size=W.shape)
            before = {key: np.array(value, copy=True) for key, value in state.items()}
            state = momentum_step(state, g + epsilon_A, epsilon_A, lr, mu)
            other = momentum_step(before, g + epsilon_A, rng.uniform(-1e3, 1e3, size=W.shape), lr, mu)
            if not (np.allclose(other["W_B"], state["W_B"], rtol=0, atol=1e-9)
                    and np.allclose(other["v_B"], state["v_B"], rtol=0, atol=1e-9)):
                return verdict(False, "the label party's velocity or share uses ε_A itself")
            v = mu * v + g
            W = W - lr * v
    except Exception as error:
        return verdict(False, f"momentum_step raised {type(error).__name__}: {error}")
    if not np.allclose(state["W_B"] + state["epsilon"], W, rtol=0, atol=1e-6):
        return verdict(False, "after 20 steps W_B + ε does not follow plain momentum")
    return verdict(True)


def one_hot_reference(dataset, train_set, test_set, coded, *, seed, epochs=9, lr=0.1):
    """The check's own one-hot run: (number of input features, test ROC AUC)."""
    from sklearn.metrics import roc_auc_score
    import nn
    names = list(dataset.feature_names)
    columns = []
    for index, name in enumerate(names):
        if name in coded:
            columns += [(dataset.X[:, index] == code).astype(float)
                        for code in np.unique(dataset.X[:, index])]
        else:
            columns.append(dataset.X[:, index])
    table = np.column_stack(columns)
    position = {identifier: row for row, identifier in enumerate(dataset.ids)}
    train = table[[position[i] for i in train_set.ids]]
    test = table[[position[i] for i in test_set.ids]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    model = nn.MLP([table.shape[1], 8, 1], activation="relu", seed=seed)
    nn.train_plaintext(model, (train - mean) / std, train_set.y, epochs=epochs, batch_size=64,
                       lr=lr, seed=seed)
    return table.shape[1], roc_auc_score(test_set.y, model.predict_scores((test - mean) / std))


def check_3(answer, dataset, train_set, test_set, seed):
    """(number of input features after one-hot coding the five integer-coded columns, test ROC
    AUC of the same 8-unit network after 9 epochs with the notebook's seed). The AUC is
    compared with the check's own run within 0.02 (column order or ties may move it a little)."""
    if not answered(answer):
        return False
    try:
        width, auc = int(answer[0]), float(answer[1])
    except (TypeError, ValueError, IndexError):
        return verdict(False, "give a tuple (number of features, test ROC AUC)")
    coded = ["CHK_ACCT", "HISTORY", "SAV_ACCT", "EMPLOYMENT", "JOB"]
    right_width, right_auc = one_hot_reference(dataset, train_set, test_set, coded, seed=seed)
    if width != right_width:
        return verdict(False, "the number of features: count the codes of each column again")
    if abs(auc - right_auc) > 0.02:
        return verdict(False, "the AUC is not that of the network described (same split, seed, "
                              "9 epochs, lr 0.1, batches of 64, training-rows standardisation)")
    return verdict(True)
