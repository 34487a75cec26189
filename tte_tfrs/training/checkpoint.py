"""A version's trainable state (vocabularies and weights), saved so an update can continue from it.

Every export writes ``checkpoint/<version>/``:

    vocabularies.json   {vocabulary name: values in embedding-row order (row 0 is the unknown slot)}
    weights.npz         every tower weight by a model-independent name (``user/...``, ``item/...``)
    optimizer.npz       Adagrad's accumulator of each weight, by the same names (Adagrad only)

Reading it back is `tte_tfrs.exports.reader.ExportReader.checkpoint` (validated like every file of
an export). Warm starts grow vocabularies by appending, so a known value keeps its row number and
its trained row is copied bit for bit into the larger table (`restore_grown`). With Adagrad (the default) the
update also continues the optimizer: each row keeps its accumulated squared gradients, so rows
trained for long take small steps on the new data while new rows take large ones
(`restore_optimizer`). Other optimizers start afresh.
"""

import json
import os
import zipfile

import numpy as np
import tensorflow as tf

from tte_tfrs.exports.layout import OPTIMIZER_FILE, VOCABULARIES_FILE, WEIGHTS_FILE

FILES = (VOCABULARIES_FILE, WEIGHTS_FILE)


def model_vocabularies(model):
    return {**model.user_tower.vocabularies(), **model.item_tower.vocabularies()}


def model_weights(model):
    """{weight key: numpy array} of both towers."""
    return {key: variable.numpy() for key, variable in _model_variables(model).items()}


def _model_variables(model):
    """{weight key: variable} of both towers."""
    return {tower.weight_key(v): v
            for tower in (model.user_tower, model.item_tower) for v in tower.weights}


SLICE_BYTES = 1 << 24       # of a variable copied to numpy at a time


def save_variables(path, variables):
    """Writes {key: variable} as `np.savez` does (an uncompressed .npz of .npy files, the same
    bytes), a slice of rows of one variable at a time: a table is never copied whole to numpy."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, variable in variables.items():
            shape = tuple(variable.shape)
            dtype = np.dtype(variable.dtype.as_numpy_dtype)
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                        "shape": shape})
                if not shape:
                    f.write(np.asarray(variable.numpy(), dtype).tobytes())
                    continue
                row_bytes = max(1, dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)))
                step = max(1, SLICE_BYTES // row_bytes)
                for start in range(0, shape[0], step):
                    f.write(np.ascontiguousarray(variable[start:start + step].numpy()).tobytes())


def _write_vocabularies(model, path):
    """`model_vocabularies` as JSON, the same text `json.dump` gives, one value at a time: a
    vocabulary kept in a file is never a Python list."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        for n, (key, values) in enumerate(
                (key, values) for tower in (model.user_tower, model.item_tower)
                for key, values in tower.iter_vocabularies()):
            f.write(", " if n else "")
            f.write(json.dumps(key, ensure_ascii=False) + ": [")
            for m, value in enumerate(values):
                f.write(", " if m else "")
                f.write(json.dumps(value, ensure_ascii=False))
            f.write("]")
        f.write("}")


def _keyed_trainables(model):
    keys = {id(v): tower.weight_key(v)
            for tower in (model.user_tower, model.item_tower) for v in tower.weights}
    return [(keys[id(v)], v) for v in model.trainable_variables]


def accumulator_of(optimizer, variable):
    """Adagrad's accumulator of `variable`, found the way Adagrad's own update step finds it (by
    the variable's key), not by position; None when the optimizer has none for it."""
    try:
        index = optimizer._index_dict.get(optimizer._var_key(variable))
        slot = optimizer._accumulators[index] if index is not None else None
    except (AttributeError, IndexError, TypeError):      # not a built Keras Adagrad
        return None
    if slot is None or tuple(slot.shape) != tuple(variable.shape):
        return None
    return slot


def _accumulators(model):
    """[(weight key, variable, accumulator)] of a built Adagrad-compiled model, else []: all of
    its trainable weights' accumulators, or none when one cannot be found."""
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, tf.keras.optimizers.Adagrad) or not optimizer.variables:
        return []
    found = [(key, v, accumulator_of(optimizer, v)) for key, v in _keyed_trainables(model)]
    return found if all(slot is not None for _, _, slot in found) else []


def save_state(model, folder):
    """Writes the model's checkpoint into `folder`; returns the file names written."""
    os.makedirs(folder, exist_ok=True)
    _write_vocabularies(model, os.path.join(folder, VOCABULARIES_FILE))
    save_variables(os.path.join(folder, WEIGHTS_FILE), _model_variables(model))
    accumulators = {key: slot for key, _, slot in _accumulators(model)}
    if not accumulators:
        return list(FILES)
    save_variables(os.path.join(folder, OPTIMIZER_FILE), accumulators)
    return list(FILES) + [OPTIMIZER_FILE]


def restore_optimizer(model, accumulators):
    """Continues a compiled Adagrad from saved `accumulators` (grown tables: new rows start at the
    optimizer's initial value). Returns False, changing nothing, for other optimizers."""
    optimizer = model.optimizer
    if not accumulators or not isinstance(optimizer, tf.keras.optimizers.Adagrad):
        return False
    optimizer.build(model.trainable_variables)
    for key, _, slot in _accumulators(model):
        if key in accumulators:
            fresh = np.full(slot.shape, optimizer.initial_accumulator_value, np.float32)
            slot.assign(_with_leading_rows(accumulators[key], fresh))
    return True


def _with_leading_rows(old, fresh):
    """`fresh` (the grown shape) with its first rows replaced by `old`; `old` itself when the shape
    did not grow (scalars included)."""
    if old.shape == fresh.shape:
        return old
    fresh[: old.shape[0]] = old
    return fresh


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
            grew = (id(variable) in tables and old.ndim == 2 and current.shape[1] == old.shape[1]
                    and current.shape[0] > old.shape[0])
            if old.shape != current.shape and not grew:
                raise ValueError(f"weight {key!r} has shape {current.shape} but the saved state "
                                 f"has {old.shape}")
            if grew:
                current[old.shape[0]:] += old[0]
            variable.assign(_with_leading_rows(old, current))
