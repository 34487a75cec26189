"""A version's trainable state (vocabularies and weights), saved so an update can continue from it.

Every export writes ``checkpoint/<version>/``:

    vocabularies.json   {vocabulary name: values in embedding-row order (row 0 is the unknown slot)}
    weights.npz         every tower weight by a model-independent name (``user/...``, ``item/...``)

Warm starts grow vocabularies by appending, so a known value keeps its row number and its trained row
is copied bit for bit into the larger table (`restore_grown`).
"""

import json
import os

import numpy as np

VOCABULARIES_FILE = "vocabularies.json"
WEIGHTS_FILE = "weights.npz"
FILES = (VOCABULARIES_FILE, WEIGHTS_FILE)


def model_vocabularies(model):
    return {**model.user_tower.vocabularies(), **model.item_tower.vocabularies()}


def model_weights(model):
    """{weight key: numpy array} of both towers."""
    return {tower.weight_key(v): v.numpy()
            for tower in (model.user_tower, model.item_tower) for v in tower.weights}


def save_state(model, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, VOCABULARIES_FILE), "w", encoding="utf-8") as f:
        json.dump(model_vocabularies(model), f, ensure_ascii=False)
    np.savez(os.path.join(folder, WEIGHTS_FILE), **model_weights(model))


def read_state(folder):
    """(vocabularies, weights) written by `save_state`.

    Raises:
      FileNotFoundError: `folder` holds no saved state.
    """
    for name in FILES:
        if not os.path.exists(os.path.join(folder, name)):
            raise FileNotFoundError(f"{folder} has no {name}")
    with open(os.path.join(folder, VOCABULARIES_FILE), encoding="utf-8") as f:
        vocabularies = json.load(f)
    with np.load(os.path.join(folder, WEIGHTS_FILE)) as data:
        weights = {key: data[key] for key in data.files}
    return vocabularies, weights


def grow_vocabularies(old, new):
    """Appends to each old vocabulary the new values it lacks (in `new`'s order).

    Returns:
      (grown vocabularies, {vocabulary name: [old size, grown size]}).
    """
    grown, growth = {}, {}
    for key in sorted(set(old) | set(new)):
        before = list(old.get(key, []))
        known = set(before)
        grown[key] = before + [v for v in new.get(key, []) if v not in known]
        growth[key] = [len(before), len(grown[key])]
    return grown, growth


def restore_grown(model, weights):
    """Loads saved `weights` into `model`, whose tables may have grown by appended rows.

    Old rows are copied exactly. An appended row starts at the old table's unknown-value row (what
    the old model used for values it had not seen) plus the model's fresh random initialisation, so
    new ids begin where the old model left them and can still move apart.

    Raises:
      ValueError: a weight is missing, or its shape changed in a way growth cannot explain.
    """
    tables = {id(emb.embeddings) for tower in (model.user_tower, model.item_tower)
              for _, emb in tower.tables().values()}
    for tower in (model.user_tower, model.item_tower):
        for variable in tower.weights:
            key = tower.weight_key(variable)
            if key not in weights:
                raise ValueError(f"the saved state has no weight {key!r}: the model's structure "
                                 "changed since it was exported")
            old, current = weights[key], variable.numpy()
            if old.shape == current.shape:
                variable.assign(old)
                continue
            grew = (id(variable) in tables and old.ndim == 2 and current.shape[1] == old.shape[1]
                    and current.shape[0] > old.shape[0])
            if not grew:
                raise ValueError(f"weight {key!r} has shape {current.shape} but the saved state "
                                 f"has {old.shape}")
            current[old.shape[0]:] += old[0]
            current[: old.shape[0]] = old
            variable.assign(current)
