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

A version is written into a staging folder and renamed into place, then the manifest is replaced
atomically, so an interrupted export leaves every earlier version and the manifest intact.
"""

import dataclasses
import datetime
import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import tensorflow as tf

from tte_tfrs.data.dataset import fill_missing
from tte_tfrs.evaluation.plots import plot_training_curve
from tte_tfrs.exports import lifecycle
from tte_tfrs.exports.layout import (
    CHECKPOINT,
    EMBEDDINGS,
    FORMAT_VERSION,
    MODELS,
    MODELS_CONFIG,
    TRAINING,
    USERS,
    VERSIONED,
)
from tte_tfrs.training import checkpoint

RETRIEVAL_K = 100


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
    catalogue is ever a tensor); returns float32 [items, k + 2]."""
    parts = []
    for start in range(0, len(catalogue), batch_size):
        rows = catalogue.iloc[start:start + batch_size]
        batch = {s.name: tf.constant(rows[s.name].to_numpy(np.float32) if s.kind == "number"
                                     else rows[s.name].to_numpy().astype(object)) for s in specs}
        parts.append(item_tower(batch).numpy())
    return np.concatenate(parts).astype(np.float32)


def _models_config(output_dir):
    entries = "".join(
        "  config {\n"
        f"    name: \"{name}\"\n"
        f"    base_path: \"{os.path.join(os.path.abspath(output_dir), name)}\"\n"
        "    model_platform: \"tensorflow\"\n"
        "  }\n" for name in MODELS)
    return "model_config_list {\n" + entries + "}\n"


def _retrieval_module(user_tower, embeddings, ids, k):
    """A tf.Module: raw user features -> exact top-k item ids and scores (tfrs BruteForce)."""
    import tensorflow_recommenders as tfrs
    layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
    layer.index(tf.constant(embeddings), tf.constant(np.asarray(ids, dtype=object)))
    module = tf.Module()
    module.user_tower, module.top_k = user_tower, layer
    return module, layer


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
    return users_of(result), rated_items(interactions_of(result), item_ids)


def export(result, output_dir, version=None, retrieval_k=RETRIEVAL_K):
    """Writes the towers, scorer, item embeddings, models.config and manifest of a `TrainResult`.

    Args:
      result: the `TrainResult` of `tte_tfrs.train`.
      output_dir: export root (created if needed).
      version: the version number; None means one more than any version used before.
      retrieval_k: how many items the retrieval SavedModel returns per user.

    Returns:
      An `ExportResult`.

    Raises:
      FileExistsError: `version` was used before (versions are never overwritten or reused).
      ExportLockedError: another process is writing to `output_dir`.
    """
    with lifecycle.writer_lock(output_dir):
        return _export_locked(result, output_dir, version, retrieval_k)


def _export_locked(result, output_dir, version, retrieval_k):
    # Numbers seen before the repair count as used: TF Serving may have loaded a partial version.
    used = lifecycle.used_versions(output_dir)
    lifecycle.repair(output_dir)
    if version is None:
        version = max(used, default=0) + 1
    elif int(version) in used:
        raise FileExistsError(f"version {version} was already used in {output_dir}; versions are "
                              "never overwritten or reused: leave the version out for the next one")
    version = int(version)
    if result.parent is not None:
        current = lifecycle.current_version(output_dir)
        if current != result.parent.version:
            raise lifecycle.LifecycleError(
                f"this update continues version {result.parent.version} of {output_dir}, but the "
                f"current version is now {current}; run the update again")
    dataset, model = result.dataset, result.model
    user_specs, item_specs = dataset.user_features, dataset.item_features
    user_tower, item_tower = model.user_tower, model.item_tower

    staging = tempfile.mkdtemp(dir=output_dir, prefix=f".staging-{version}-")
    try:
        module = tf.Module()
        module.user_tower = user_tower
        _save(module, _signature(user_tower, user_specs, "embedding"),
              os.path.join(staging, "user_tower"))
        module = tf.Module()
        module.item_tower = item_tower
        _save(module, _signature(item_tower, item_specs, "embedding"),
              os.path.join(staging, "item_tower"))
        module = tf.Module()
        module.user_tower, module.item_tower = user_tower, item_tower
        _save(module, _signature(model, user_specs + item_specs, "rating"),
              os.path.join(staging, "scorer"))

        catalogue = catalogue_of(result)
        embeddings = item_embeddings(item_tower, catalogue, item_specs)
        folder = os.path.join(staging, EMBEDDINGS)
        os.makedirs(folder)
        np.save(os.path.join(folder, "embeddings.npy"), embeddings)
        with open(os.path.join(folder, "item_ids.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{item_id}\n" for item_id in catalogue["item_id"])
        catalogue.to_csv(os.path.join(folder, "items.csv"), index=False)

        retrieval_k = int(min(retrieval_k, len(catalogue)))
        module, top_k = _retrieval_module(user_tower, embeddings, catalogue["item_id"], retrieval_k)

        def recommend(features):
            scores, ids = top_k(user_tower(features))
            return {"scores": scores, "item_ids": ids}

        names = [spec.name for spec in user_specs]
        serve = tf.function(lambda *tensors: recommend(dict(zip(names, tensors))),
                            input_signature=[spec.tensor_spec() for spec in user_specs])
        _save(module, serve.get_concrete_function(), os.path.join(staging, "retrieval"))

        folder = os.path.join(staging, USERS)
        os.makedirs(folder)
        users, rated = users_and_rated(result, catalogue["item_id"].tolist())
        users.to_csv(os.path.join(folder, "users.csv"), index=False)
        np.savez(os.path.join(folder, "rated.npz"), **rated)
        checkpoint_files = checkpoint.save_state(model, os.path.join(staging, CHECKPOINT))

        paths = {}
        folder = os.path.join(staging, TRAINING)
        os.makedirs(folder)
        with open(os.path.join(folder, "history.json"), "w", encoding="utf-8") as f:
            json.dump(result.history, f, indent=2)
        plot_training_curve(result.history, os.path.join(folder, "training_curve.png"))

        for name in VERSIONED:
            target = os.path.join(output_dir, name, str(version))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(os.path.join(staging, name), target)
            paths[name] = target
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    dim = user_tower.output_dim
    manifest = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "embedding_dim": dim,
        "latent_dim": user_tower.latent_dim,
        "embedding_layout": {"user": "[latent_0..latent_{k-1}, user_bias + global_mean, 1]",
                             "item": "[latent_0..latent_{k-1}, 1, item_bias]",
                             "rating": "dot(user_embedding, item_embedding)"},
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
        "users": {"path": f"{USERS}/{version}", "files": ["users.csv", "rated.npz"]},
        "training": {"path": f"{TRAINING}/{version}",
                     "files": ["history.json", "training_curve.png"]},
        "item_embeddings": {"path": f"{EMBEDDINGS}/{version}", "count": int(len(embeddings)),
                            "files": ["embeddings.npy", "item_ids.txt", "items.csv"]},
        "dataset": {"name": dataset.name, "layout": dataset.layout, "source": dataset.source,
                    "rating_scale": list(dataset.rating_scale),
                    "counts": dataset.counts(), "splits": result.splits.sizes(),
                    "report": dataset.report.to_dict()},
        "checkpoint": {"path": f"{CHECKPOINT}/{version}", "files": checkpoint_files},
        "parent_version": result.parent.version if result.parent is not None else None,
        "update": result.update,
        "config": result.config.to_dict(),
        "metrics": result.metrics,
        "history": result.history,
    }
    lifecycle.write_atomically(os.path.join(output_dir, MODELS_CONFIG), _models_config(output_dir))
    lifecycle.write_manifest(output_dir, manifest)
    return ExportResult(output_dir=output_dir, version=version, paths=paths, manifest=manifest)
