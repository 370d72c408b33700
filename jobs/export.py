"""The exported plaintext model: where the weights stop being private, by both parties' consent.

``export_model`` combines the two checkpoints' shares into W = W_B + ε_acc and writes one .npz
(no pickle); ``load_model`` reads it back into a :class:`PlainModel` with the same ``predict`` /
``predict_proba`` surface as the estimator. A file of its own because nothing else in the
library ever joins the shares.

What the file reveals besides W (EXPORT_REVEALS): the data party's feature statistics (the
mean and std of every feature over its training rows), and, since it holds W, the rows of
every prediction made with this model: the label party saw z = X_new·W + b of each row it
scored, so z·W⁺ gives X_new for all of them (leak L5; with h ≥ d, exactly).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass

import numpy as np

from jobs import checkpoint, preparation
import nn
from jobs import run_directory
from parties import BottomModel

REVEAL_FLAG = "--i-understand-this-reveals-the-weights"
MODEL_FORMAT = "acml-plaintext-model"
EXPORT_REVEALS = ("these weights are no longer private, nor the data party's feature means and "
                  "stds, nor (with W and the z it saw, leak L5) every row the label party ever "
                  "predicted")


def export_model(checkpoint_dir, out, *, i_understand_this_reveals_the_weights: bool = False
                 ) -> dict:
    """Combine the two shares into the plaintext model W = W_B + ε_acc: the weights stop being
    private here, by the explicit consent of both parties.

    Writes ``out`` (.npz, loadable with allow_pickle=False): ``layers.0.W``, ``layers.0.b``,
    ``layers.1.W``, ... as float64; ``standardizer.mean``/``standardizer.std`` (the data
    party's, needed to use the model on raw rows); with a bottom model, its ``bottom.W`` and
    ``bottom.b`` (the model is then bottom, then the MLP); and ``architecture``, a JSON string
    (layer sizes, activation, loss, feature and class names, and ``bottom``: null or its
    n_features, width and activation). Returns the arrays written.

    The architecture also carries the data party's preparation of its raw columns
    (jobs/preparation.py; null without one), so that the model applies to a raw file.

    Caveat: besides W the file reveals the data party's feature statistics (mean and std, and
    the categories and fill values of its preparation), and
    to a label party that kept the z of its predictions, X_new = (z − b)·W⁺ of every row it
    ever predicted (leak L5).
    """
    if not i_understand_this_reveals_the_weights:
        raise ValueError("export combines both parties' shares into the plaintext weights, "
                         f"which then stop being private; consent with {REVEAL_FLAG}")
    with run_directory.hold(checkpoint_dir, shared=True):  # no run is renaming them meanwhile
        data_state, label_state = run_directory.load_pair(checkpoint_dir, allow_insecure=True)
    sizes = list(label_state.layer_sizes)
    model = nn.MLP(sizes, activation=label_state.training["activation"])
    architecture = {"format": MODEL_FORMAT, "version": 1, "layer_sizes": sizes,
                    "activation": model.activation, "loss": model.loss,
                    "feature_names": data_state.feature_names,
                    "class_names": label_state.class_names,
                    "epochs_completed": label_state.epochs_completed, "bottom": None,
                    "preparation": data_state.preparation}
    arrays = {"layers.0.W": (label_state.weight_share + data_state.noise_acc).decode()}
    bottom = data_state.bottom
    if bottom is not None:
        architecture["bottom"] = {"n_features": bottom.n_features, "width": bottom.width,
                                  "activation": bottom.activation_name}
        arrays["bottom.W"], arrays["bottom.b"] = bottom.layer.W, bottom.layer.b
    arrays.update(label_state.parameters)
    arrays["standardizer.mean"] = data_state.feature_mean
    arrays["standardizer.std"] = data_state.feature_std
    arrays = {name: arrays[name] for name in sorted(arrays)}
    arrays["architecture"] = np.array(json.dumps(architecture))
    checkpoint.write_atomically(out, lambda handle: np.savez(handle, **arrays))
    return arrays


@dataclass
class PlainModel:
    """An exported model: the plaintext MLP, plus the data party's standardisation and its
    bottom model (None without one)."""

    mlp: nn.MLP
    feature_mean: np.ndarray
    feature_std: np.ndarray
    feature_names: list
    class_names: list
    bottom: BottomModel | None = None
    preparation: dict | None = None  # the data party's, as plain data (jobs/preparation.py)

    def rows_of_file(self, path, id_column: str) -> tuple:
        """(ids, X) of a raw features file, prepared as the data party prepared its training
        file (categories, fill values, dropped columns), or read as numbers without one."""
        prepared = (None if self.preparation is None
                    else preparation.Preparation.from_dict(self.preparation))
        ids, X, names = preparation.load_features_as_trained(path, id_column, prepared)
        if prepared is None and names != list(self.feature_names):
            raise ValueError(f"{path}: its columns {names} are not the model's "
                             f"{list(self.feature_names)}")
        return ids, X

    def inputs(self, X) -> np.ndarray:
        """What the MLP takes for raw rows: standardised as at training, then α = bottom(X)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"features of shape {X.shape}: the model takes "
                             f"{len(self.feature_names)} columns")
        standardized = (X - self.feature_mean) / self.feature_std
        return standardized if self.bottom is None else self.bottom.forward(standardized)

    def predict_scores(self, X) -> np.ndarray:
        """Scores for raw rows: standardised as at training, through the bottom model if any,
        then the MLP."""
        return self.mlp.predict_scores(self.inputs(X))

    @property
    def classes_(self) -> np.ndarray:
        """The class names in class order: the columns of :meth:`predict_proba`."""
        return np.asarray(self.class_names)

    def predict_proba(self, X) -> np.ndarray:
        """(m, k) probabilities for raw rows, columns in ``classes_`` order (the estimator's
        surface: VerticalMLPClassifier.predict_proba)."""
        return nn.probabilities(self.predict_scores(X))

    def predict(self, X) -> np.ndarray:
        """The predicted class names (values of ``classes_``) for raw rows."""
        return self.classes_[self.mlp.classes_from_scores(self.predict_scores(X))]


def load_model(path) -> PlainModel:
    """Read an exported model (no pickle) back into an nn.MLP."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        architecture = json.loads(str(arrays.pop("architecture")[()]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable exported model ({error})") from None
    if architecture.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an exported ACML model")
    mlp = nn.MLP(architecture["layer_sizes"], activation=architecture["activation"],
                 loss=architecture["loss"])
    for name, _ in list(mlp.named_params()):
        _, index, attribute = name.split(".")
        layer = mlp.layers[int(index)]
        if name not in arrays:
            raise ValueError(f"{path}: no array {name!r} for the architecture it declares")
        if arrays[name].shape != getattr(layer, attribute).shape:
            raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, the architecture "
                             f"says {getattr(layer, attribute).shape}")
        setattr(layer, attribute, np.array(arrays[name], dtype=np.float64))
    return PlainModel(mlp, arrays["standardizer.mean"], arrays["standardizer.std"],
                      architecture["feature_names"], architecture["class_names"],
                      _exported_bottom(arrays, architecture, path),
                      architecture.get("preparation"))


def _exported_bottom(arrays: dict, architecture: dict, path) -> BottomModel | None:
    """The bottom model an export declares (None if it declares none), checked against its
    arrays (shapes, float64, finite) and against the MLP's input width."""
    spec = architecture.get("bottom")
    if spec is None:
        return None
    try:
        shapes = {"bottom.W": (int(spec["n_features"]), int(spec["width"])),
                  "bottom.b": (int(spec["width"]),)}
        activation = spec["activation"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad bottom model in its architecture ({error!r})") from None
    if shapes["bottom.b"][0] != architecture["layer_sizes"][0]:
        raise ValueError(f"{path}: its bottom model is {shapes['bottom.b'][0]} wide, the MLP "
                         f"takes {architecture['layer_sizes'][0]} inputs")
    for name, shape in shapes.items():
        if name not in arrays:
            raise ValueError(f"{path}: no array {name!r} for the bottom model it declares")
        if arrays[name].shape != shape or arrays[name].dtype != np.float64:
            raise ValueError(f"{path}: {name} is {arrays[name].dtype} of shape "
                             f"{arrays[name].shape}, the architecture says float64 of {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{path}: {name} holds a value that is not finite")
    if activation not in nn.ACTIVATIONS:
        raise ValueError(f"{path}: unknown bottom activation {activation!r}")
    return BottomModel.from_weights(arrays["bottom.W"], arrays["bottom.b"], activation)
