"""TF Serving fidelity: every exported SavedModel loads and answers through TensorFlow's C API.

TF Serving loads SavedModels with the C++ ``LoadSavedModel``; the tensorflow wheel ships it in
``libtensorflow_cc.so.2`` behind the C API (``TF_LoadSessionFromSavedModel``, ``TF_SessionRun``).
`capi_runner.py` drives it through ctypes in a process that imports no TensorFlow Python, so only
ops built into TensorFlow's C++ library exist there. The requests are the README's curl examples,
turned into tensors the way TF Serving's REST layer does ("instances": one row per instance, each
named input from every instance, numbers as float32 for float inputs, strings as strings), and
the answers must equal what Python gets from the same SavedModels, and from `Recommender`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from tensorflow.core.protobuf import saved_model_pb2

from tte_tfrs.data.dataset import join_features
from tte_tfrs.exports.layout import MODELS
from tte_tfrs.exports.writer import export
from tte_tfrs.serving.recommender import Recommender
from tte_tfrs.training.trainer import TrainResult, build_model, predict

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "capi_runner.py")
DTYPES = {1: "float32", 7: "string"}


def readme_requests() -> dict[str, dict]:
    """{model: JSON body} of the README's curl examples."""
    text = open(README, encoding="utf-8").read()
    found = re.findall(r"curl -d '(\{.*?\})'\s*\\?\s*localhost:8501/v1/models/(\w+):predict",
                       text, flags=re.S)
    return {model: json.loads(body) for body, model in found}


def signature(path: str) -> tuple[dict, dict]:
    """({input: (tensor name, dtype)}, {output: tensor name}) of serving_default."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    sig = proto.meta_graphs[0].signature_def["serving_default"]
    return ({k: (v.name, DTYPES[v.dtype]) for k, v in sig.inputs.items()},
            {k: v.name for k, v in sig.outputs.items()})


def rest_tensors(body: dict, inputs: dict) -> dict[str, list]:
    """The row ("instances") format of TF Serving's REST API as named 1-D tensors: every
    instance must give exactly the signature's inputs; numbers feed float inputs, strings
    string inputs."""
    instances = body["instances"]
    columns = {}
    for name, (_, dtype) in inputs.items():
        column = []
        for instance in instances:
            assert set(instance) == set(inputs), f"instance keys {sorted(instance)} != inputs"
            value = instance[name]
            if dtype == "float32":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), name
                column.append(float(value))
            else:
                assert isinstance(value, str), name
                column.append(value)
        columns[name] = column
    return columns


@pytest.fixture(scope="module")
def exports(exported, trained, tmp_path_factory):
    """The session export (batch-scoped J, summed features) and an export with the other shape:
    hidden ReLU layers and table-scoped J (untrained: its graphs are what matters here)."""
    config = tiny_config(trained.config.data_dir, hidden_units=(8,), regularization_scope="table",
                         regularizer="l1")
    columns = join_features(trained.splits.train.head(64), trained.dataset)
    model = build_model(config, trained.dataset, columns, 7.0)
    predict(model, columns)
    other = TrainResult(model=model, config=config, dataset=trained.dataset, splits=trained.splits,
                        metrics={}, history={"loss": [1.0]})
    root = os.path.join(str(tmp_path_factory.mktemp("hidden")), "models")
    return [exported.output_dir, export(other, root).output_dir]


def run_capi(jobs: list[dict]) -> list[dict]:
    lib_dir = os.path.dirname(tf.__file__)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    done = subprocess.run([sys.executable, RUNNER], input=json.dumps({"lib_dir": lib_dir,
                                                                     "jobs": jobs}),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["python_tensorflow_imported"] is False
    return answer["answers"]


def test_every_savedmodel_answers_the_readme_requests_through_the_c_api(exports):
    requests = readme_requests()
    assert sorted(requests) == sorted(MODELS)
    jobs, expected = [], []
    for root in exports:
        for model in MODELS:
            path = os.path.join(root, model, "1")
            inputs, outputs = signature(path)
            columns = rest_tensors(requests[model], inputs)
            jobs.append({"path": path,
                         "inputs": {n: {"tensor": inputs[n][0], "dtype": inputs[n][1],
                                        "values": columns[n]} for n in inputs},
                         "outputs": {n: {"tensor": t, "dtype": ""} for n, t in outputs.items()}})
            python = tf.saved_model.load(path).signatures["serving_default"]
            result = python(**{n: tf.constant(columns[n], dtype=tf.float32 if inputs[n][1] ==
                                              "float32" else tf.string) for n in inputs})
            expected.append({k: v.numpy() for k, v in result.items()})
    answers = run_capi(jobs)
    for job, answer, python in zip(jobs, answers, expected):
        assert "error" not in answer, (job["path"], answer)
        assert sorted(answer) == sorted(python)
        for name, value in python.items():
            got = answer[name]
            assert got["shape"] == list(value.shape), (job["path"], name)
            if value.dtype == object:
                assert got["values"] == [v.decode() for v in value.ravel()], (job["path"], name)
            else:
                np.testing.assert_allclose(np.asarray(got["values"], np.float32), value.ravel(),
                                           rtol=1e-6, atol=1e-6, err_msg=f"{job['path']} {name}")
    # The scorer is the dot product of the towers, also in C++; retrieval equals the Recommender.
    by_path = {job["path"]: answer for job, answer in zip(jobs, answers)}
    for root in exports:
        user = np.asarray(by_path[os.path.join(root, "user_tower", "1")]["embedding"]["values"])
        item = np.asarray(by_path[os.path.join(root, "item_tower", "1")]["embedding"]["values"])
        rating = by_path[os.path.join(root, "scorer", "1")]["rating"]["values"][0]
        assert rating == pytest.approx(float(user @ item), rel=1e-5, abs=1e-5)
    recommender = Recommender.load(exports[0], backend="exact")
    instance = dict(requests["retrieval"]["instances"][0])
    retrieval = by_path[os.path.join(exports[0], "retrieval", "1")]
    k = recommender.manifest["retrieval_k"]
    recommended = recommender.recommend(instance.pop("user_id"), instance, k=k,
                                        exclude_rated=False)
    assert retrieval["item_ids"]["values"] == [r.item_id for r in recommended]


def graph_nodes(path: str):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta in proto.meta_graphs:
        yield from meta.graph_def.node
        for function in meta.graph_def.library.function:
            yield from function.node_def


def test_no_regularizer_in_any_serving_graph(exports):
    for root in exports:
        for model in MODELS:
            nodes = list(graph_nodes(os.path.join(root, model, "1")))
            assert nodes
            found = [n.name for n in nodes if n.op in ("L2Loss", "Abs")
                     or "regulariz" in n.name.lower()]
            assert not found, f"{root}/{model} computes J when serving: {found[:5]}"
