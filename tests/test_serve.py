"""tte-serve: the real server (uvicorn, a subprocess on a free loopback port) answers every endpoint,
follows new versions and rollbacks while answering, reports a version that fails to load, refuses
bad requests with 4xx and a message, and schemathesis finds no server error in its OpenAPI schema."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from conftest import tiny_config  # noqa: E402

from tte_tfrs.exports import lifecycle  # noqa: E402
from tte_tfrs.exports.writer import export  # noqa: E402
from tte_tfrs.serving.recommender import Recommender  # noqa: E402
from tte_tfrs.training.trainer import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(exported, tmp_path_factory):
    """(client, export folder the server watches, process): a copy of the session export, so
    the versions written here touch no other test's folder."""
    folder = str(tmp_path_factory.mktemp("serve") / "models")
    shutil.copytree(exported.output_dir, folder)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tte_tfrs.scripts.serve", f"--output_dir={folder}",
         f"--port={port}", "--backend=exact", "--poll_interval_s=0.2", "--index_wait_s=0",
         "--retry_interval_s=600", "--exit_after_s=600", "--max_body_bytes=4096"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"tte-serve exited with {process.returncode}: {process.stderr.read()}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tte-serve did not become ready"
            time.sleep(0.1)
        yield client, folder, process
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def local(service):
    """The same version loaded in this process, for the answers the server must give."""
    return Recommender.load(service[1], backend="exact", version=1)


def a_user_with_ratings(recommender):
    users = recommender.users_with_ratings
    return str(users[int(np.argmax([len(recommender.rated_rows(u)) for u in users]))])


def as_items(recommendations):
    return [{"rank": r.rank, "item_id": r.item_id, "score": r.score, "title": r.title}
            for r in recommendations]


def metric(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(client, holds, what):
    deadline = time.monotonic() + WAIT_S
    while True:
        state = client.get("/readyz").json()
        if holds(state):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state}"
        time.sleep(0.1)


def test_every_endpoint_answers_as_the_recommender_does(service, local):
    client, _, _ = service
    user = a_user_with_ratings(local)
    answer = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
    assert answer["version"] == 1 and answer["backend"] == "exact" and answer["user_id"] == user
    assert answer["recommendations"] == as_items(local.recommend(user, k=5))
    new_user = {"location": "porto, lisboa, portugal", "age": 31}
    answer = client.post("/v1/recommend", json={"features": new_user, "k": 3,
                                                "exclude_rated": False}).json()
    assert answer["recommendations"] == as_items(local.recommend(features=new_user, k=3))

    batch = client.post("/v1/recommend/batch", json={"users": [{"user_id": user},
                                                               {"features": new_user}], "k": 4})
    assert batch.status_code == 200 and batch.json()["version"] == 1
    assert [r["recommendations"] for r in batch.json()["results"]] == \
        [as_items(rs) for rs in local.recommend_batch([user, None], [None, new_user], k=4)]

    embedding = client.post("/v1/embed", json={"user_id": user}).json()
    np.testing.assert_array_equal(np.float32(embedding["embedding"]),
                                  local.user_embeddings([local.user_features(user)])[0])
    items = [str(i) for i in local.index.ids[:3]]
    scores = client.post("/v1/score", json={"user_id": user, "item_ids": items}).json()
    assert [s["item_id"] for s in scores["scores"]] == items and scores["version"] == 1
    np.testing.assert_allclose([s["score"] for s in scores["scores"]],
                               local.score(user, item_ids=items), rtol=1e-6)

    info = client.get("/v1/model").json()
    assert info["version"] == 1 and info["catalogue_size"] == local.catalogue_size
    assert info["metrics"]["test_rmse"] == local.manifest["metrics"]["test_rmse"]
    assert info["dataset"]["name"] == "book-crossing" and "source" not in info["dataset"]
    assert set(info["user_features"]) == {"user_id", "location", "age"}
    assert client.get("/healthz").json() == {"status": "ok", "version": 1}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["version"] == 1

    text = client.get("/metrics").text
    assert metric(text, "tte_serve_model_version") == 1
    assert metric(text, "tte_serve_requests_total", '{code="200",endpoint="/v1/recommend"}') >= 2
    assert metric(text, "tte_serve_request_duration_seconds_count",
                  '{endpoint="/v1/score"}') >= 1
    assert "tte_serve_request_duration_seconds_bucket" in text
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/recommend", "/v1/score"}


BAD_REQUESTS = [
    ("/v1/recommend", {"user_id": "no-such-user"}, 422, "unknown user id 'no-such-user'"),
    ("/v1/recommend", {}, 422, "give a user id or user features"),
    ("/v1/recommend", {"features": {"shoe_size": 3}}, 422, "unknown user feature(s) shoe_size"),
    ("/v1/recommend", {"features": {"age": "old"}}, 422, "'age' must be a number"),
    ("/v1/recommend", {"features": {"age": [30]}}, 422, "features.age: must be a string, a finite"),
    ("/v1/recommend", {"user_id": True}, 422, "user_id: must be a string or an integer"),
    ("/v1/recommend", {"features": {"age": 30}, "k": 0}, 422, "k: Input should be greater"),
    ("/v1/recommend", {"features": {"age": 30}, "k": 999}, 422, "k must be between 1 and the "
     "catalogue size"),
    ("/v1/recommend", {"features": {"age": 30}, "k": 2.5}, 422, "k: Input should be a valid integer"),
    ("/v1/recommend", {"features": {"age": 30}, "top": 3}, 422, "top: Extra inputs are not permitted"),
    ("/v1/recommend", b"{not json", 400, "malformed JSON body"),
    ("/v1/recommend", b"[1, 2]", 422, "the body must be a JSON object, got an array"),
    ("/v1/recommend", b"x" * 5000, 413, "request body over the limit of 4096 bytes"),
    ("/v1/recommend", b'{"features": {"location": "\\ud800"}}', 422, "not valid Unicode text"),
    ("/v1/recommend", b'{"features": {"\\ud800": 1}}', 422, "[key]: Input should be a valid string"),
    ("/v1/recommend", b'{"features": {"age": 1' + b"0" * 400 + b"}}", 422,
     "'age' must be a number"),
    ("/v1/recommend/batch", {"users": [{"features": {"age": 3}}, {"user_id": "nobody"}]}, 422,
     "users[1]: unknown user id 'nobody'"),
    ("/v1/recommend/batch", {"users": []}, 422, "users: List should have at least 1 item"),
    ("/v1/score", {"features": {"age": 30}, "item_ids": ["no-such-item"]}, 422,
     "1 unknown item id(s): 'no-such-item'"),
    ("/v1/embed", {"user_id": "nobody"}, 422, "unknown user id 'nobody'"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_a_message(service, path, body, status, message):
    client, _, _ = service
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and response.json()["version"] == 1


def test_bad_transport_gets_4xx(service):
    client, _, _ = service
    form = client.post("/v1/recommend", content=b'{"user_id": "1"}',
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]
    chunked = client.post("/v1/recommend", content=iter([b'{"user_id": "', b"x" * 5000, b'"}']),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "over the limit" in chunked.json()["error"]
    assert client.get("/v1/recommend").status_code == 405
    assert client.get("/nowhere").json()["error"] == "Not Found"


def test_follows_new_versions_and_rollbacks_while_answering(service, tiny_data, local):
    client, folder, _ = service
    other = train(tiny_config(tiny_data[0], epochs=1, seed=43))       # a model that answers otherwise
    user = a_user_with_ratings(local)
    expected = {1: as_items(local.recommend(user, k=5))}
    answers, stop = [], threading.Event()

    def ask():                               # requests in flight through every swap
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            while not stop.is_set():
                response = own.post("/v1/recommend", json={"user_id": user, "k": 5})
                answers.append((response.status_code, response.json()))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        assert export(other, folder).version == 2
        expected[2] = as_items(Recommender.load(folder, backend="exact", version=2).recommend(
            user, k=5))
        wait_for(client, lambda s: s["version"] == 2, "version 2")
        # A version that cannot be loaded (its folders are missing) is reported; 2 keeps serving.
        broken = dict(json.load(open(os.path.join(folder, "manifest.json"))), version=3)
        lifecycle.write_manifest(folder, broken)
        state = wait_for(client, lambda s: (s["last_failure"] or {}).get("version") == 3,
                         "the failure of version 3")
        assert state["version"] == 2 and state["ready"] and "missing" in \
            state["last_failure"]["error"]
        text = client.get("/metrics").text
        assert metric(text, "tte_serve_version_loads_total", '{outcome="failed"}') >= 1
        assert metric(text, "tte_serve_last_failed_version") == 3
        assert lifecycle.rollback(folder) == (3, 2)      # the broken version is rolled back ...
        assert lifecycle.rollback(folder) == (2, 1)      # ... then 2, which is being served
        wait_for(client, lambda s: s["version"] == 1, "the rollback to version 1")
        deadline = time.monotonic() + WAIT_S
        while sum(a["version"] == 1 for _, a in answers[-3:]) < 3:     # answers after it too
            assert time.monotonic() < deadline, "no answers after the rollback"
            time.sleep(0.05)
    finally:
        stop.set()
        asker.join(30)
    assert expected[1] != expected[2]
    assert all(code == 200 for code, _ in answers), [a for c, a in answers if c != 200][:3]
    versions = [answer["version"] for _, answer in answers]
    runs = [v for n, v in enumerate(versions) if n == 0 or versions[n - 1] != v]
    assert runs == [1, 2, 1], runs                  # each swap once, never back and forth
    wrong = [a for _, a in answers if a["recommendations"] != expected[a["version"]]]
    assert not wrong, wrong[:2]
    assert metric(client.get("/metrics").text, "tte_serve_model_version") == 1


def test_schemathesis_finds_no_server_error(service, tmp_path):
    client, _, _ = service
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{client.base_url}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "--max-examples", "15", "--seed", "14",
         "--generation-database", "none", "--workers", "1", "--request-timeout", "20"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_new_version_waits_for_its_index_then_a_failed_load_keeps_the_old_one(exported,
                                                                               tmp_path):
    from tte_tfrs.serving.config import ServeConfig
    from tte_tfrs.serving.versions import VersionManager
    folder = str(tmp_path / "models")
    shutil.copytree(exported.output_dir, folder)
    manager = VersionManager(ServeConfig(output_dir=folder, backend="faiss-hnsw",
                                         index_wait_s=600))
    assert manager.load_current().version == 1
    lifecycle.write_manifest(folder, dict(exported.manifest, version=2))   # no index, no folders
    manager.poll()
    state = manager.state()
    assert state["version"] == 1 and state["waiting_for_index"] == 2 and not state["last_failure"]
    manager.config = dataclasses.replace(manager.config, index_wait_s=0)
    manager.poll()
    state = manager.state()
    assert state["version"] == 1 and state["last_failure"]["version"] == 2
    assert manager.current.version == 1
    assert manager.metrics.registry.get_sample_value("tte_serve_last_failed_version") == 2


def test_script_refuses_bad_flags_and_folders_with_a_message(tmp_path, capsys):
    from tte_tfrs.scripts import serve
    assert serve.run(["tte-serve", "--help"]) == 0 and "--index_wait_s" in capsys.readouterr().out
    assert serve.run(["tte-serve", f"--output_dir={tmp_path}"]) == 2
    assert "holds no export" in capsys.readouterr().err
    assert serve.run(["tte-serve", "--port=70000"]) == 2
    assert "--port: port must be in 0..65535" in capsys.readouterr().err
