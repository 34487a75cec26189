"""Exports: layout, manifest, TF-only loading, the exact dot product, stock ops, safe versioning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tte_tfrs.data.dataset import join_features
from tte_tfrs.exports.layout import MODELS
from tte_tfrs.exports.lifecycle import live_versions as existing_versions
from tte_tfrs.exports.writer import export
from tte_tfrs.model.vocabulary import build_vocabularies
from tte_tfrs.training.trainer import predict

CLEAN_LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
request = json.load(sys.stdin)
out = {}
for name, inputs in request.items():
    fn = tf.saved_model.load(inputs.pop("__path__")).signatures["serving_default"]
    args = {k: tf.constant(np.asarray(v, dtype=np.float32 if isinstance(v[0], float) else object))
            for k, v in inputs.items()}
    out[name] = {k: v.numpy().tolist() for k, v in fn(**args).items()}
out["imported_tte_tfrs"] = any(m.startswith("tte_tfrs") for m in sys.modules)
out["keras_imported"] = "tf_keras" in sys.modules
print(json.dumps(out))
"""


def sample_columns(trained, n=32):
    columns = join_features(trained.splits.test.head(n), trained.dataset)
    columns.pop("rating")
    return columns


def as_json(values):
    return [float(v) if isinstance(v, (float, np.floating)) else str(v) for v in values]


def test_layout_and_models_config(exported):
    root = exported.output_dir
    for name in MODELS:
        assert os.path.isfile(os.path.join(root, name, "1", "saved_model.pb"))
    for name in ("embeddings.npy", "item_ids.txt", "items.csv"):
        assert os.path.isfile(os.path.join(root, "item_embeddings", "1", name))
    config = open(os.path.join(root, "models.config")).read()
    for name in MODELS:
        assert f'name: "{name}"' in config
        assert f'base_path: "{os.path.join(os.path.abspath(root), name)}"' in config
    assert config.count("model_platform: \"tensorflow\"") == len(MODELS) == 4
    for name in ("users.csv", "rated.npz"):
        assert os.path.isfile(os.path.join(root, "users", "1", name))


def test_manifest_records_what_serving_needs(exported, trained):
    manifest = json.load(open(os.path.join(exported.output_dir, "manifest.json")))
    assert manifest["version"] == 1
    assert manifest["embedding_dim"] == trained.config.embedding_dim + 2
    for key in ("test_rmse", "test_mae", "baseline_rmse"):
        assert manifest["metrics"][key] == pytest.approx(trained.metrics[key])
    assert set(manifest["signatures"]) == set(MODELS)
    assert manifest["signatures"]["user_tower"]["inputs"]["age"]["dtype"] == "float32"
    assert manifest["signatures"]["item_tower"]["inputs"]["item_id"]["dtype"] == "string"
    assert manifest["dataset"]["counts"]["explicit_ratings"] == \
        trained.dataset.counts()["explicit_ratings"]
    assert manifest["dataset"]["splits"] == trained.splits.sizes()
    assert manifest["config"]["embedding_dim"] == trained.config.embedding_dim
    assert manifest["item_embeddings"]["count"] == len(trained.dataset.catalogue())


def test_item_embeddings_match_the_item_tower(exported, trained):
    folder = os.path.join(exported.output_dir, "item_embeddings", "1")
    embeddings = np.load(os.path.join(folder, "embeddings.npy"))
    ids = open(os.path.join(folder, "item_ids.txt"), encoding="utf-8").read().splitlines()
    catalogue = trained.dataset.catalogue().sort_values("item_id").reset_index(drop=True)
    assert ids == catalogue["item_id"].tolist() and len(set(ids)) == len(ids)
    assert ids == sorted(ids)                      # row order is id order: ties go to the lower id
    rows = catalogue.head(10)
    batch = {s.name: tf.constant(rows[s.name].to_numpy().astype(
        np.float32 if s.kind == "number" else object)) for s in trained.dataset.item_features}
    np.testing.assert_allclose(embeddings[:10], trained.model.item_tower(batch).numpy(), rtol=1e-6)


def test_exports_load_and_answer_in_a_process_without_tte_tfrs(exported, trained):
    columns = sample_columns(trained)
    user_names = [s.name for s in trained.dataset.user_features]
    item_names = [s.name for s in trained.dataset.item_features]
    root = exported.output_dir
    request = {
        "user_tower": {"__path__": os.path.join(root, "user_tower", "1"),
                       **{k: as_json(columns[k]) for k in user_names}},
        "item_tower": {"__path__": os.path.join(root, "item_tower", "1"),
                       **{k: as_json(columns[k]) for k in item_names}},
        "scorer": {"__path__": os.path.join(root, "scorer", "1"),
                   **{k: as_json(columns[k]) for k in user_names + item_names}},
    }
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", CLEAN_LOADER], input=json.dumps(request),
                          capture_output=True, text=True, env=env, cwd=str(root), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["imported_tte_tfrs"] is False and answer["keras_imported"] is False
    u = np.asarray(answer["user_tower"]["embedding"], np.float32)
    v = np.asarray(answer["item_tower"]["embedding"], np.float32)
    rating = np.asarray(answer["scorer"]["rating"], np.float32)
    # The exported scorer is exactly the dot product of the exported towers...
    np.testing.assert_allclose(rating, np.sum(u * v, axis=1), rtol=1e-5, atol=1e-5)
    # ...and gives what the in-process model gives.
    columns_with_rating = join_features(trained.splits.test.head(32), trained.dataset)
    np.testing.assert_allclose(rating, predict(trained.model, columns_with_rating), rtol=1e-5,
                               atol=1e-5)


def test_saved_model_cli_lists_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli is not installed next to this Python")
    done = subprocess.run([cli, "show", "--all", "--dir",
                           os.path.join(exported.output_dir, "scorer", "1")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "signature_def['serving_default']" in done.stdout
    for name in ("inputs['user_id']", "inputs['item_id']", "inputs['age']", "outputs['rating']"):
        assert name in done.stdout


def graph_ops(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta in proto.meta_graphs:
        ops |= {node.op for node in meta.graph_def.node}
        for function in meta.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    return ops


def test_exports_use_only_stock_tensorflow_ops(exported):
    stock = set(dir(tf.raw_ops))
    for name in MODELS:
        ops = graph_ops(os.path.join(exported.output_dir, name, "1"))
        custom = {op for op in ops if op not in stock and not op.startswith("__inference")}
        assert not custom, f"{name} uses ops stock TF Serving may lack: {sorted(custom)}"
        assert not any(">" in op for op in ops)       # namespaced custom ops such as Scann>...


def test_next_export_is_a_new_version_and_never_overwrites(trained, tmp_path):
    root = str(tmp_path / "models")
    first = export(trained, root)
    second = export(trained, root)
    assert (first.version, second.version) == (1, 2)
    assert existing_versions(root) == [1, 2]
    assert json.load(open(os.path.join(root, "manifest.json")))["version"] == 2
    with pytest.raises(FileExistsError):
        export(trained, root, version=2)


def test_failed_export_leaves_earlier_versions_and_manifest_untouched(trained, tmp_path,
                                                                      monkeypatch):
    from tte_tfrs.exports import writer
    root = str(tmp_path / "models")
    export(trained, root)
    manifest_before = open(os.path.join(root, "manifest.json")).read()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "item_embeddings", broken)
    with pytest.raises(RuntimeError):
        export(trained, root)
    assert existing_versions(root) == [1]
    assert open(os.path.join(root, "manifest.json")).read() == manifest_before
    assert not [n for n in os.listdir(root) if n.startswith(".staging")]
    for name in MODELS:
        assert sorted(os.listdir(os.path.join(root, name))) == ["1"]


def test_reader_refuses_an_export_of_a_newer_format(exported, tmp_path):
    import shutil

    from tte_tfrs.errors import ExportError
    from tte_tfrs.exports.reader import ExportReader
    root = str(tmp_path / "copy")
    shutil.copytree(exported.output_dir, root)
    path = os.path.join(root, "manifest.json")
    manifest = json.load(open(path))
    assert ExportReader(root).version == manifest["version"]
    manifest["format_version"] = 99
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ExportError, match="format 99 was written by a newer tte_tfrs"):
        ExportReader(root)


def graph_string_constants(saved_model_dir):
    """Sizes of the string constants of a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    nodes = [node for meta in proto.meta_graphs for node in meta.graph_def.node]
    nodes += [node for meta in proto.meta_graphs for function in meta.graph_def.library.function
              for node in function.node_def]
    return [len(node.attr["value"].tensor.string_val) for node in nodes if node.op == "Const"]


def trained_vocabularies(trained):
    """The vocabularies of the training rows, computed again (not read from the model)."""
    specs = trained.dataset.user_features + trained.dataset.item_features
    return build_vocabularies(specs, join_features(trained.splits.train, trained.dataset),
                              trained.config.min_count, trained.config.max_text_tokens)


def test_vocabularies_are_assets_of_each_saved_model_not_graph_constants(exported, trained):
    root = exported.output_dir
    saved = json.load(open(os.path.join(root, "checkpoint", "1", "vocabularies.json"),
                           encoding="utf-8"))
    towers = {"user": trained.model.user_tower, "item": trained.model.item_tower}
    assert saved == trained_vocabularies(trained)
    for name, sides in (("user_tower", ["user"]), ("item_tower", ["item"]),
                        ("scorer", ["user", "item"]), ("retrieval", ["user"])):
        folder = os.path.join(root, name, "1")
        files = {f"{side}.{key.replace('/', '_')}.txt": key for side in sides
                 for key, values in towers[side].vocabularies().items() if values}
        assert sorted(os.listdir(os.path.join(folder, "assets"))) == sorted(files)
        for file, key in files.items():       # line n is row n + 1 of the key's table
            with open(os.path.join(folder, "assets", file), encoding="utf-8", newline="\n") as f:
                assert f.read() == "".join(f"{value}\n" for value in saved[key])
        assert max(graph_string_constants(folder)) < 50      # no vocabulary inside the graph


def test_the_exported_user_tower_maps_each_known_id_to_its_own_row(exported, trained):
    tower = trained.model.user_tower
    vocabulary = trained_vocabularies(trained)["user_id"]
    table = tower.tables()["user_id"][1].embeddings.numpy()
    serve = tf.saved_model.load(os.path.join(exported.output_dir, "user_tower", "1")) \
        .signatures["serving_default"]
    rows = [1, 6, len(vocabulary)]
    ids = [vocabulary[row - 1] for row in rows] + ["no such user"]
    out = serve(user_id=tf.constant(ids), location=tf.constant([""] * 4),
                age=tf.constant([float("nan")] * 4))["embedding"].numpy()
    k = trained.config.embedding_dim
    # The users differ only in their id, so their embeddings differ by their id rows (latent
    # dimensions and bias) from the unknown row 0's.
    np.testing.assert_allclose(out[:3, :k + 1] - out[3, :k + 1], table[rows] - table[0],
                               rtol=1e-5, atol=1e-6)
