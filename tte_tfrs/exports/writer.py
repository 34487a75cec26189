"""Exports trained towers as TF Serving SavedModels, with item embeddings and a manifest.

Layout under OUTPUT_DIR (one integer version per export, TF Serving serves the highest):

    user_tower/<version>/        serving_default: user features -> {"embedding": [batch, k+2]}
    item_tower/<version>/        serving_default: item features -> {"embedding": [batch, k+2]}
    scorer/<version>/            serving_default: user + item features -> {"rating": [batch]}
    retrieval/<version>/         serving_default: user features -> {"item_ids", "scores"} [batch, top_k]
                                 (brute force over the embedded item table, stock TF ops only)
    item_embeddings/<version>/   embeddings.npy (float32 [items, k+2]), item_ids.txt, items.csv,
                                 rows sorted by item id
    users/<version>/             users.csv (known users' features), rated.npz (who rated what)
    training/<version>/          history.json (loss and RMSE per epoch), training_curve.png
    checkpoint/<version>/        vocabularies.json, weights.npz (+ optimizer.npz with Adagrad): what
                                 a warm start continues from
    models.config                TF Serving model_config_list for the four SavedModels
    manifest.json                the current version's manifest: dimensions, signatures, data,
                                 config, metrics (manifests/<version>.json keeps every version's)

A version is written into a staging folder and then committed (`lifecycle.commit_version`: parts
renamed into place, its manifest, ``manifest.json``, then ``models.config`` naming the version for
TF Serving), so an interrupted export leaves every earlier version, the manifest and what TF Serving
serves intact.
"""

import dataclasses
import datetime
import json
import os
import shutil

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs import ids
from tte_tfrs.data.dataset import fill_missing
from tte_tfrs.errors import ExportError
from tte_tfrs.evaluation.plots import plot_training_curve
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.layout import (
    CHECKPOINT,
    CURVE_FILE,
    EMBEDDINGS,
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    HISTORY_FILE,
    ITEM_IDS_FILE,
    ITEMS_FILE,
    RATED_FILE,
    TRAINING,
    USERS,
    USERS_FILE,
)
from tte_tfrs.training import checkpoint

RETRIEVAL_K = 100
ID_SLICE = 1 << 16          # ids turned into Python strings at a time


@dataclasses.dataclass
class ExportResult:
    """Where an export went.

    Attributes:
      output_dir: the export root.
      version: the version written.
      paths: model name -> version folder (plus ``item_embeddings``).
      manifest: the manifest written.
    """

    output_dir: str
    version: int
    paths: dict
    manifest: dict


def _signature(fn, specs, output_name):
    """A serving signature taking each spec as a named 1-D input and returning {output_name: ...}."""
    names = [spec.name for spec in specs]

    @tf.function(input_signature=[spec.tensor_spec() for spec in specs])
    def serve(*tensors):
        return {output_name: fn(dict(zip(names, tensors)))}

    return serve.get_concrete_function()


def _signature_doc(specs, outputs):
    return {"inputs": {s.name: {"dtype": s.dtype.name, "shape": [-1], "kind": s.kind,
                                "description": s.description} for s in specs},
            "outputs": outputs}


def _save(module, signature, path):
    tf.saved_model.save(module, path, signatures={"serving_default": signature})


def item_embeddings(item_tower, catalogue, specs, batch_size=8192):
    """Runs the item tower over every catalogue row, a batch at a time (only one batch of the
    catalogue is ever a tensor), into one float32 [items, k + 2] array."""
    out = None
    for start in range(0, len(catalogue), batch_size):
        rows = catalogue.iloc[start:start + batch_size]
        batch = {s.name: tf.constant(rows[s.name].to_numpy(np.float32) if s.kind == "number"
                                     else rows[s.name].to_numpy().astype(object)) for s in specs}
        part = item_tower(batch).numpy()
        if out is None:
            out = np.empty((len(catalogue), part.shape[1]), np.float32)
        out[start:start + len(part)] = part
    return out if out is not None else np.zeros((0, item_tower.output_dim), np.float32)


def _top_k_layer(embeddings, ids, k):
    """Exact top-k item ids and scores of a user embedding (tfrs BruteForce over the catalogue)."""
    import tensorflow_recommenders as tfrs
    layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
    ids = pd.Series(ids, dtype=object) if not isinstance(ids, pd.Series) else ids
    # The id tensor is built a slice at a time (only one slice is ever Python strings).
    parts = [tf.constant(ids.iloc[start:start + ID_SLICE].to_numpy(dtype=object), tf.string)
             for start in range(0, len(ids), ID_SLICE)]
    layer.index(tf.constant(embeddings), tf.concat(parts, axis=0) if parts
                else tf.constant([], tf.string))
    return layer


def rated_items(ratings, item_ids):
    """Compressed who-rated-what: user ids, and per user the catalogue rows they interacted with."""
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    frame = ratings[["user_id", "item_id"]].assign(row=ratings["item_id"].map(row_of))
    frame = frame.dropna(subset=["row"]).sort_values(["user_id", "row"], kind="stable")
    users, starts = np.unique(frame["user_id"].to_numpy().astype(str), return_index=True)
    offsets = np.append(starts, len(frame)).astype(np.int64)
    return {"user_ids": users, "offsets": offsets, "rows": frame["row"].to_numpy(np.int64)}


def catalogue_of(result):
    """Every item of the export, sorted by id: the data's catalogue plus, after a warm start, the
    parent's items the new data did not mention (new feature values win)."""
    catalogue = result.dataset.catalogue()
    if result.parent is not None:
        old = result.parent.items
        catalogue = pd.concat([catalogue, old[~old["item_id"].isin(catalogue["item_id"])]],
                              ignore_index=True)
    catalogue = fill_missing(catalogue, result.dataset.item_features)
    return catalogue.sort_values("item_id", kind="stable").reset_index(drop=True)


def users_of(result):
    """Known users' features: the users table, users only seen in ratings, the parent's users."""
    dataset = result.dataset
    users = dataset.users
    rating_users = pd.Index(dataset.ratings["user_id"].unique())
    tables = [users, pd.DataFrame({"user_id": rating_users.difference(pd.Index(users["user_id"]))})]
    if result.parent is not None:
        old = result.parent.users
        known = pd.Index(users["user_id"]).union(rating_users)
        tables.append(old[~old["user_id"].isin(known)])
    return fill_missing(pd.concat(tables, ignore_index=True), dataset.user_features)


def interactions_of(result):
    """(user_id, item_id) pairs the export knows: the data's ratings plus the parent's pairs."""
    pairs = result.dataset.ratings[["user_id", "item_id"]]
    if result.parent is not None:
        pairs = pd.concat([pairs, result.parent.interactions], ignore_index=True)
    return pairs.drop_duplicates()


def users_and_rated(result, item_ids):
    """(known users' table, who rated what); a streamed data set (ratings on disk) computes both
    chunk by chunk."""
    streamed = getattr(result.dataset, "export_users", None)
    if streamed is not None and result.parent is None:
        return streamed(item_ids)
    return users_of(result), rated_items(interactions_of(result), list(item_ids))


def export(result, output_dir, version=None, retrieval_k=RETRIEVAL_K):
    """Writes the towers, scorer, item embeddings, models.config and manifest of a `TrainResult`.

    Nothing is written unless the model is finite and every id can be stored; the version is
    staged and then switched to in one commit (`tte_tfrs.exports.lifecycle.commit_version`).

    Args:
      result: the `TrainResult` of `tte_tfrs.train`.
      output_dir: export root (created if needed).
      version: the version number; None means one more than any version used before.
      retrieval_k: how many items the retrieval SavedModel returns per user.

    Returns:
      An `ExportResult`.

    Raises:
      ExportError: a NaN or infinite weight or embedding, or an id that cannot be stored.
      FileExistsError: `version` was used before (versions are never overwritten or reused).
      ExportLockedError: another process is writing to `output_dir`.
    """
    with lifecycle.writer_lock(output_dir):
        return _export_locked(result, output_dir, version, retrieval_k)


def serving_module(*layers):
    """A `tf.Module` tracking only what the serving signatures capture: the layers' variables and
    lookup tables. Saving the Keras towers themselves would also serialise every Keras layer's
    call and loss functions into the SavedModel (table-scoped J included, and 38 "Skipping full
    serialization" warnings per export), none of which serving runs."""
    module = tf.Module()
    module.serving_variables = [v for layer in layers for v in layer.weights]
    module.serving_tables = [m.lookup_table for layer in layers for m in layer.submodules
                             if isinstance(getattr(m, "lookup_table", None),
                                           tf.lookup.StaticHashTable)]
    return module


def check_exportable(result, catalogue, users):
    """Refuses a model or tables that must not be exported.

    Raises:
      ExportError: a weight that is NaN or infinite, or an item or user id that could not be
        stored and read back (`tte_tfrs.ids.id_problem`).
    """
    for variable in result.model.weights:
        if variable.dtype.is_floating and not np.isfinite(variable.numpy()).all():
            raise ExportError(f"weight {variable.name} is NaN or infinite: the training diverged; "
                              "nothing was exported (lower learning_rate and train again)")
    for what, column in (("item id", catalogue["item_id"]), ("user id", users["user_id"])):
        for start in range(0, len(column), ID_SLICE):      # a slice of Python strings at a time
            values = pd.Series(column.iloc[start:start + ID_SLICE], dtype=object).astype(str)
            values = values.reset_index(drop=True)
            problems = ids.id_problems(values)
            problems[problems.isna() & (ids.canonical_ids(values) != values)] = \
                "has surrounding white space (not in the form tte_tfrs.ids.canonical_id gives)"
            bad = problems.notna().to_numpy()
            if bad.any():
                raise ExportError(f"{what} {values[bad].iloc[0][:40]!r} {problems[bad].iloc[0]}; "
                                  f"ids must be canonical, at most {ids.MAX_ID_CHARS} characters, "
                                  "without control characters (load data with "
                                  "tte_tfrs.load_dataset): nothing was exported")


def _export_locked(result, output_dir, version, retrieval_k):
    dataset, model = result.dataset, result.model
    user_specs, item_specs = dataset.user_features, dataset.item_features
    user_tower, item_tower = model.user_tower, model.item_tower
    catalogue = catalogue_of(result)
    users, rated = users_and_rated(result, catalogue["item_id"])
    check_exportable(result, catalogue, users)
    embeddings = item_embeddings(item_tower, catalogue, item_specs)
    if not np.isfinite(embeddings).all():
        raise ExportError("the item tower gives NaN or infinite embeddings: the training "
                          "diverged; nothing was exported (lower learning_rate and train again)")

    # Numbers seen before the repair count as used: TF Serving may have loaded a partial version.
    used = lifecycle.used_versions(output_dir)
    lifecycle.repair(output_dir)
    if version is None:
        version = max(used, default=0) + 1
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a positive whole number, got {version!r}")
    elif version in used:
        raise FileExistsError(f"version {version} was already used in {output_dir}; versions are "
                              "never overwritten or reused: leave the version out for the next one")
    if result.parent is not None:
        current = lifecycle.current_version(output_dir)
        if current != result.parent.version:
            raise lifecycle.LifecycleError(
                f"this update continues version {result.parent.version} of {output_dir}, but the "
                f"current version is now {current}; run the update again")

    staging = lifecycle.staging_folder(output_dir, version)
    try:
        # The tables are written first and let go of before the SavedModels are saved, so the
        # memory they held serves the retrieval model's copy of the embeddings.
        folder = os.path.join(staging, USERS)
        os.makedirs(folder)
        users.to_csv(os.path.join(folder, USERS_FILE), index=False)
        np.savez(os.path.join(folder, RATED_FILE), **rated)
        del users, rated

        folder = os.path.join(staging, EMBEDDINGS)
        os.makedirs(folder)
        np.save(os.path.join(folder, EMBEDDINGS_FILE), embeddings)
        with open(os.path.join(folder, ITEM_IDS_FILE), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{item_id}\n" for item_id in catalogue["item_id"])
        catalogue.to_csv(os.path.join(folder, ITEMS_FILE), index=False)
        item_ids = catalogue["item_id"]
        del catalogue

        _save(serving_module(user_tower), _signature(user_tower, user_specs, "embedding"),
              os.path.join(staging, "user_tower"))
        _save(serving_module(item_tower), _signature(item_tower, item_specs, "embedding"),
              os.path.join(staging, "item_tower"))
        _save(serving_module(user_tower, item_tower),
              _signature(model, user_specs + item_specs, "rating"), os.path.join(staging, "scorer"))

        retrieval_k = int(min(retrieval_k, len(item_ids)))
        _save_retrieval(user_tower, user_specs, embeddings, item_ids, retrieval_k,
                        os.path.join(staging, "retrieval"))
        item_count = len(embeddings)
        del embeddings, item_ids
        checkpoint_files = checkpoint.save_state(model, os.path.join(staging, CHECKPOINT))

        folder = os.path.join(staging, TRAINING)
        os.makedirs(folder)
        with open(os.path.join(folder, HISTORY_FILE), "w", encoding="utf-8") as f:
            json.dump(result.history, f, indent=2)
        plot_training_curve(result.history, os.path.join(folder, CURVE_FILE))

        manifest = _manifest(result, version, item_count, retrieval_k, checkpoint_files)
        paths = lifecycle.commit_version(output_dir, staging, version, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(output_dir=output_dir, version=version, paths=paths, manifest=manifest)


def _save_retrieval(user_tower, user_specs, embeddings, item_ids, k, path):
    """The retrieval SavedModel (its copy of the embeddings and ids is freed on return)."""
    top_k = _top_k_layer(embeddings, item_ids, k)

    def recommend(features):
        scores, found = top_k(user_tower(features))
        return {"scores": scores, "item_ids": found}

    names = [spec.name for spec in user_specs]
    serve = tf.function(lambda *tensors: recommend(dict(zip(names, tensors))),
                        input_signature=[spec.tensor_spec() for spec in user_specs])
    _save(serving_module(user_tower, top_k), serve.get_concrete_function(), path)


def _manifest(result, version, item_count, retrieval_k, checkpoint_files):
    dataset, user_tower = result.dataset, result.model.user_tower
    user_specs, item_specs = dataset.user_features, dataset.item_features
    dim = user_tower.output_dim
    return {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "embedding_dim": dim,
        "latent_dim": dim - 2,
        "ensemble_members": user_tower.members,
        "embedding_layout": {"user": "[latent_0..latent_{k-1}, user_bias + global_mean, 1]",
                             "item": "[latent_0..latent_{k-1}, 1, item_bias]",
                             "rating": "dot(user_embedding, item_embedding)"}
        if user_tower.members == 1 else {
            "user": "[member latents / M, mean over members of (user_bias + global_mean), 1]",
            "item": "[member latents, 1, mean over members of item_bias]",
            "rating": "dot(user_embedding, item_embedding) = the members' mean rating"},
        "signatures": {
            "user_tower": _signature_doc(user_specs, {"embedding": {"dtype": "float32",
                                                                    "shape": [-1, dim]}}),
            "item_tower": _signature_doc(item_specs, {"embedding": {"dtype": "float32",
                                                                    "shape": [-1, dim]}}),
            "scorer": _signature_doc(user_specs + item_specs, {"rating": {"dtype": "float32",
                                                                          "shape": [-1]}}),
            "retrieval": _signature_doc(user_specs, {
                "item_ids": {"dtype": "string", "shape": [-1, retrieval_k]},
                "scores": {"dtype": "float32", "shape": [-1, retrieval_k]}}),
        },
        "retrieval_k": retrieval_k,
        "users": {"path": f"{USERS}/{version}", "files": [USERS_FILE, RATED_FILE]},
        "training": {"path": f"{TRAINING}/{version}", "files": [HISTORY_FILE, CURVE_FILE]},
        "item_embeddings": {"path": f"{EMBEDDINGS}/{version}", "count": int(item_count),
                            "files": [EMBEDDINGS_FILE, ITEM_IDS_FILE, ITEMS_FILE]},
        "dataset": {"name": dataset.name, "layout": dataset.layout, "source": dataset.source,
                    "rating_scale": list(dataset.rating_scale),
                    "counts": dataset.counts(), "splits": result.splits.sizes(),
                    "split_hashes": result.splits.hashes(),
                    "report": dataset.report.to_dict()},
        "checkpoint": {"path": f"{CHECKPOINT}/{version}", "files": checkpoint_files},
        "parent_version": result.parent.version if result.parent is not None else None,
        "update": result.update,
        "tuning": getattr(result, "tuning", None),
        "config": result.config.to_dict(),
        "metrics": result.metrics,
        "history": result.history,
    }
