"""Recommending from an export: by id, by features, in batches; errors; the retrieval SavedModel."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tte_tfrs.errors import ExportError
from tte_tfrs.retrieval.building import build_index
from tte_tfrs.serving.recommender import RecommendationError, Recommender


@pytest.fixture(scope="module")
def recommender(exported):
    return Recommender.load(exported.output_dir, backend="exact")


def a_user_with_ratings(recommender):
    users = recommender.users_with_ratings
    counts = [len(recommender.rated_rows(u)) for u in users]
    return str(users[int(np.argmax(counts))])


def test_recommend_by_id_is_sorted_exact_and_skips_rated(recommender):
    user = a_user_with_ratings(recommender)
    recs = recommender.recommend(user, k=10)
    assert len(recs) == 10 and [r.rank for r in recs] == list(range(1, 11))
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    rated = {str(recommender.index.ids[row]) for row in recommender.rated_rows(user)}
    assert rated and not rated & {r.item_id for r in recs}
    query = recommender.user_embeddings([recommender.user_features(user)])[0]
    rows = [int(np.flatnonzero(recommender.index.ids == r.item_id)[0]) for r in recs]
    np.testing.assert_allclose(scores, recommender.index.embeddings[rows] @ query, rtol=1e-5)
    everything = recommender.index.embeddings @ query
    everything[recommender.rated_rows(user)] = -np.inf
    assert recs[0].score == pytest.approx(float(everything.max()), rel=1e-5)
    with_rated = recommender.recommend(user, k=10, exclude_rated=False)
    assert with_rated[0].score >= recs[0].score


def test_every_rated_item_is_excluded_and_nothing_else(recommender, trained):
    user = a_user_with_ratings(recommender)
    ratings = trained.dataset.ratings                       # what the export was trained from
    rated = set(ratings.loc[ratings["user_id"] == user, "item_id"])
    assert len(rated) >= 5 and rated <= set(recommender.index.ids)
    rest = recommender.catalogue_size - len(rated)
    # Asking for every item not rated must return exactly those: a rated item that slipped
    # through would push one unrated item out.
    for spelled in (user, f" {user} "):                    # one id normalisation for every lookup
        recs = recommender.recommend(spelled, k=rest)
        assert {r.item_id for r in recs} == set(map(str, recommender.index.ids)) - rated
    with pytest.raises(RecommendationError, match="k must be between 1"):
        recommender.recommend(user, k=recommender.catalogue_size + 1)


def test_titles_come_with_the_items(recommender, trained):
    catalogue = trained.dataset.catalogue().set_index("item_id")["title"]
    recs = recommender.recommend(a_user_with_ratings(recommender), k=20)
    assert any(r.title for r in recs)
    assert [r.title for r in recs] == [catalogue[r.item_id] for r in recs]


def test_new_user_from_features_only(recommender, trained):
    import tensorflow as tf
    features = {"location": "salem, california, usa", "age": 33}
    recs = recommender.recommend(features=features, k=5)
    # The same raw features through the trained Keras tower, then brute force over the catalogue.
    inputs = {"user_id": tf.constant([""]), "location": tf.constant([features["location"]]),
              "age": tf.constant([33.0])}
    query = trained.model.user_tower(inputs).numpy()[0]
    scores = recommender.index.embeddings @ query
    best = np.lexsort((np.arange(len(scores)), -scores))[:5]
    assert [r.item_id for r in recs] == [str(recommender.index.ids[row]) for row in best]
    np.testing.assert_allclose([r.score for r in recs], scores[best], rtol=1e-5)
    other = recommender.recommend(features={"location": "porto, lisboa, portugal", "age": 70}, k=5)
    assert [r.score for r in other] != [r.score for r in recs]
    unknown_id = recommender.recommend("no-such-user", {"age": 40}, k=3)
    assert len(unknown_id) == 3


def test_same_request_same_ranking_across_loads_and_batches(recommender, exported):
    users = list(recommender.users_with_ratings[:5])
    single = [recommender.recommend(u, k=8) for u in users]
    batch = recommender.recommend_batch(users, k=8)
    again = Recommender.load(exported.output_dir, backend="exact").recommend_batch(users, k=8)
    assert single == batch == again


@pytest.mark.parametrize("request_kwargs, message", [
    ({"user_id": "no-such-user"}, "unknown user id 'no-such-user'"),
    ({"user_id": None}, "give a user id or user features"),
    ({"features": {"age": "old"}}, "'age' must be a number"),
    ({"features": {"shoe_size": 3}}, "unknown user feature(s) shoe_size"),
    ({"features": {"age": 30}, "k": 0}, "k must be between 1"),
    ({"features": {"age": 30}, "k": 10**9}, "k must be between 1"),
    ({"features": {"age": 30}, "k": 2.5}, "k must be a whole number"),
])
def test_bad_requests_get_clear_errors(recommender, request_kwargs, message):
    with pytest.raises(RecommendationError) as info:
        recommender.recommend(**request_kwargs)
    assert message in str(info.value)


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="holds no export"):
        Recommender.load(str(tmp_path))


def test_saved_index_is_used_and_recorded(exported):
    index, meta = build_index(exported.output_dir, "faiss-hnsw")
    manifest = json.load(open(os.path.join(exported.output_dir, "manifest.json")))
    assert manifest["indexes"]["faiss-hnsw"]["fingerprint"] == meta["fingerprint"]
    loaded = Recommender.load(exported.output_dir, backend="faiss-hnsw", build_if_missing=False)
    assert loaded.index.name == index.name and not loaded.index.notes
    exact = Recommender.load(exported.output_dir, backend="exact")
    user = a_user_with_ratings(exact)
    assert [r.item_id for r in loaded.recommend(user, k=5)] == \
        [r.item_id for r in exact.recommend(user, k=5)]


RETRIEVAL_CLIENT = r"""
import json, sys
import numpy as np
import tensorflow as tf
request = json.load(sys.stdin)
fn = tf.saved_model.load(request.pop("__path__")).signatures["serving_default"]
out = fn(**{k: tf.constant(v, dtype=tf.float32 if k == "age" else tf.string) for k, v in request.items()})
print(json.dumps({"ids": [[i.decode() for i in row] for row in out["item_ids"].numpy()],
                  "scores": out["scores"].numpy().tolist(),
                  "tte_tfrs": any(m.startswith("tte_tfrs") for m in sys.modules)}))
"""


def test_retrieval_savedmodel_answers_in_plain_tensorflow(exported, recommender):
    user = a_user_with_ratings(recommender)
    features = recommender.user_features(user)
    request = {"__path__": os.path.join(exported.output_dir, "retrieval", "1"),
               **{k: [v] for k, v in features.items()}}
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", RETRIEVAL_CLIENT], input=json.dumps(request),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["tte_tfrs"] is False
    k = exported.manifest["retrieval_k"]
    expected = recommender.recommend(user, k=k, exclude_rated=False)
    assert answer["ids"][0] == [r.item_id for r in expected]
    np.testing.assert_allclose(answer["scores"][0], [r.score for r in expected], rtol=1e-5)


def test_index_and_recommend_scripts(exported, capsys):
    from tte_tfrs.scripts import index as index_script
    from tte_tfrs.scripts import recommend as recommend_script
    common = [f"--output_dir={exported.output_dir}", "--backend=exact"]
    assert index_script.run(["tte-index", *common]) == 0
    assert "Built exact index" in capsys.readouterr().out
    user = str(np.loadtxt(os.path.join(exported.output_dir, "users", "1", "users.csv"),
                          dtype=str, delimiter=",", skiprows=1, usecols=0, max_rows=1))
    assert recommend_script.run(["tte-recommend", *common, f"--user_id={user}", "--k=3",
                                 "--format=json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["recommendations"]) == 3 and answer["user_id"] == user
    assert recommend_script.run(["tte-recommend", *common, "--feature=age=abc"]) == 2
    assert "'age' must be a number" in capsys.readouterr().err


def test_one_id_normalisation_for_every_lookup(recommender):
    user = a_user_with_ratings(recommender)
    for spelling in (f" {user} ", f"\t{user}\n", user):
        assert recommender.has_user(spelling)
        np.testing.assert_array_equal(recommender.rated_rows(spelling), recommender.rated_rows(user))
        recs = recommender.recommend(spelling, k=5)
        rated = {str(recommender.index.ids[row]) for row in recommender.rated_rows(user)}
        assert recs == recommender.recommend(user, k=5) and not rated & {r.item_id for r in recs}
    with pytest.raises(RecommendationError, match="control character"):
        recommender.recommend(f"{user}\x00", k=5)
    with pytest.raises(RecommendationError, match="longer than 64 characters"):
        recommender.recommend("9" * 65, {"age": 30}, k=5)


def test_sorted_ids_find_every_position_without_a_dict():
    import pyarrow as pa

    from tte_tfrs.serving.recommender import SortedIds
    values = ["b", "é", "a", "10", "9", "ab", "Z"]
    found = SortedIds(pa.array(values, pa.large_string()))
    assert [found.find(v) for v in values] == list(range(len(values)))
    assert [found.find(v) for v in ("c", "", "1", "é ", "aa", None)] == [None] * 6
