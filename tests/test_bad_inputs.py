"""The gauntlet: bad data files, flags and export folders get a message naming the file, line,
field or flag and what was expected (exit 2), never a traceback, never an export, never a read
outside the export folder.

Every case is a tiny file written here and stops before any training, so the whole suite is fast.
The scripts run in process (`run()` returns the exit code; an uncaught exception would fail the
test as the traceback a user would see).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest

from tte_tfrs.errors import ExportError
from tte_tfrs.exports.reader import ExportReader, VersionGoneError
from tte_tfrs.scripts import evaluate as evaluate_script
from tte_tfrs.scripts import index as index_script
from tte_tfrs.scripts import recommend as recommend_script
from tte_tfrs.scripts import train as train_script

RATINGS_HEADER = "User-ID,ISBN,Book-Rating\n"


def ratings(rows: int = 60, rating=lambda n: n % 10 + 1, isbn=lambda n: f"{n % 17:010d}") -> str:
    return RATINGS_HEADER + "".join(f"{n % 13 + 1},{isbn(n)},{rating(n)}\n" for n in range(rows))


def write(folder, name, content, mode="w"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        f.write(content)
    return path


# -- data files: (name, files to write {name: text or bytes}, extra flags, expected in message) ---

def _corrupt_zip(folder):
    path = os.path.join(folder, "archive.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("Ratings.csv", ratings(400))
    data = bytearray(open(path, "rb").read())
    start = data.index(b"Ratings.csv") + len(b"Ratings.csv")     # the local header's name
    for n in range(start + 20, start + 60):
        data[n] ^= 0x5A                                          # damage the deflate stream
    open(path, "wb").write(bytes(data))


def _truncated_gzip(folder):
    blob = gzip.compress(ratings(400).encode())
    open(os.path.join(folder, "Ratings.csv.gz"), "wb").write(blob[: len(blob) // 2])


def _not_a_zip(folder):
    write(folder, "archive.zip", b"PK\x03\x04 this is not really a zip", "wb")


def _movielens_newline_ids(folder):
    # Every item id holds a line break (a quoted field): such ids are refused, counted, and a
    # file that loses most rows to them is refused.
    write(folder, "u.data", "".join(f'{n % 5 + 1}\t"1{n}\n2"\t{n % 5 + 1}\t88125\n'
                                    for n in range(40)))


def _long_isbns(folder):
    write(folder, "Ratings.csv", ratings(50, isbn=lambda n: "9" * 100 + str(n)))


def _huge_field(folder):
    write(folder, "Ratings.csv", RATINGS_HEADER + "1," + "7" * (2 << 20) + ",5\n"
          + ratings(5)[len(RATINGS_HEADER):])


def _unterminated_quote(folder):
    lines = ratings(300).splitlines(keepends=True)
    lines[100] = '7,"0195153448,8\n'                                # line 101 opens a quote
    write(folder, "Ratings.csv", "".join(lines))


DATA_CASES = [
    ("unterminated quote swallows the rest", _unterminated_quote, [],
     ["Ratings.csv, line 101", "unterminated quote", "--max_dropped_fraction"]),
    ("a 2 MB field", _huge_field, [], ["Ratings.csv, line 2", "never ends"]),
    ("ids longer than the cap", _long_isbns, [],
     ["Ratings.csv", "longer than 64 characters", "--max_dropped_fraction"]),
    ("corrupt zip member", _corrupt_zip, [], ["archive.zip:Ratings.csv", "cannot be read"]),
    ("truncated gzip", _truncated_gzip, [], ["Ratings.csv.gz", "cannot be read"]),
    ("not a zip", _not_a_zip, [], ["archive.zip", "not a readable zip archive"]),
    ("empty ratings file", lambda f: write(f, "Ratings.csv", ""), [],
     ["Ratings.csv, line 1", "is empty"]),
    ("wrong header", lambda f: write(f, "Ratings.csv", "user;book;score\n1;2;3\n"), [],
     ["Ratings.csv, line 1", "User-ID,ISBN,Book-Rating"]),
    ("ratings that are not numbers", lambda f: write(f, "Ratings.csv", ratings(
        20, rating=lambda n: "good")), [], ["Ratings.csv, line 2, field 'Book-Rating'"]),
    ("ratings on another scale", lambda f: write(f, "Ratings.csv", ratings(
        80, rating=lambda n: 11 + n)), [], ["Ratings.csv", "outside the rating scale 0-10",
                                             "--max_dropped_fraction"]),
    ("every rating implicit", lambda f: write(f, "Ratings.csv", ratings(80, rating=lambda n: 0)),
     [], ["--include_implicit", "implicit"]),
    ("movielens ids with line breaks", _movielens_newline_ids, [],
     ["u.data", "control character", "--max_dropped_fraction"]),
    ("movielens rows with 3 fields", lambda f: write(f, "u.data", "1\t2\t3\n" * 30), [],
     ["u.data", "malformed line (expected 4 fields)"]),
    ("empty folder", lambda f: os.makedirs(f, exist_ok=True), [], ["holds no known data set"]),
    ("asked layout missing", lambda f: write(f, "Ratings.csv", ratings(30)),
     ["--dataset=movielens"], ["--dataset=movielens was asked for"]),
    ("a fold that is not there", lambda f: write(f, "Ratings.csv", ratings(30)), ["--split=u1"],
     ["split 'u1' is not a fold"]),
]


@pytest.mark.parametrize("name, make, flags, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files_are_refused_before_training(tmp_path, capsys, name, make, flags, expected):
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    os.makedirs(data, exist_ok=True)
    make(data)
    code = train_script.run(["tte-train", f"--data_dir={data}", f"--output_dir={out}", *flags])
    error = capsys.readouterr().err
    assert code == 2, error
    for part in expected:
        assert part in error, error
    assert "Traceback" not in error and not os.path.exists(os.path.join(out, "manifest.json"))


def test_data_dir_that_is_a_device_or_missing(tmp_path, capsys):
    for path, expected in (("/dev/null", "neither a folder nor a regular file"),
                           (str(tmp_path / "nope"), "does not exist")):
        assert train_script.run(["tte-train", f"--data_dir={path}",
                                 f"--output_dir={tmp_path / 'out'}"]) == 2
        assert expected in capsys.readouterr().err


# -- flags: every one validated before any work, and named --------------------------------------

def _a_file(tmp_path):
    return write(str(tmp_path), "a_file", "x")


TRAIN_FLAG_CASES = [
    (["--hidden_units=abc"], "--hidden_units: expected comma-separated int values"),
    (["--hidden_units=8,-2"], "--hidden_units: hidden_units must be positive layer sizes"),
    (["--seed=-1"], "--seed: seed must be a whole number from 0 to 2**31 - 1"),
    (["--learning_rate=inf"], "--learning_rate: learning_rate must be a finite number > 0"),
    (["--learning_rate=nan"], "--learning_rate: learning_rate must be a finite number > 0"),
    (["--learning_rate=abc"], "--learning_rate"),
    (["--keep_versions=-1"], "--keep_versions"),
    (["--epochs=0"], "--epochs: epochs must be a whole number >= 1"),
    (["--batch_size=0"], "--batch_size"),
    (["--embedding_dim=0"], "--embedding_dim"),
    (["--validation_fraction=0.6"], "--validation_fraction: validation_fraction must be in"),
    (["--max_dropped_fraction=2"], "--max_dropped_fraction: max_dropped_fraction must be a number"),
    (["--regularization=-1"], "--regularization"),
    (["--split=u9"], "--split"),
    (["--optimizer=foo"], "--optimizer"),
    (["--verbose=5"], "--verbose"),
    (["--foo=1"], "foo"),
    (["stray"], "unexpected arguments: stray"),
    (["--data_dir="], "--data_dir: data_dir must be a path"),
    (["--output_dir={file}"], "--output_dir: {file} is a file, not a folder"),
    (["--output_dir="], "--output_dir: must be a folder path"),
    (["--tensorboard_dir={file}/logs"], "--tensorboard_dir: cannot create the folder"),
    (["--warm_start_from={tmp}/none"], "--warm_start_from: {tmp}/none is not an export folder"),
    (["--warm_start_from={tmp}", "--output_dir={tmp}/other"],
     "--output_dir: --warm_start_from writes the next version into the folder it continues"),
    (["--warm_start_from={tmp}", "--learning_rate=-3"], "--learning_rate"),
    (["--rollback={tmp}/none"], "--rollback: {tmp}/none is not an export folder"),
    (["--rollback={tmp}"], "has no complete version"),
]


@pytest.mark.parametrize("flags, expected", TRAIN_FLAG_CASES,
                         ids=[" ".join(c[0]) for c in TRAIN_FLAG_CASES])
def test_bad_train_flags_are_named_before_any_work(tmp_path, capsys, flags, expected):
    names = {"file": _a_file(tmp_path), "tmp": str(tmp_path)}
    flags = [f.format(**names) for f in flags]
    # A data folder that does not exist: any flag error must come before the data is read.
    argv = ["tte-train", f"--data_dir={tmp_path / 'no-data'}"] + flags
    if not any(f.startswith(("--output_dir", "--warm_start_from", "--rollback")) for f in flags):
        argv.append(f"--output_dir={tmp_path / 'out'}")
    if any(f.startswith("--data_dir") for f in flags):
        argv.remove(f"--data_dir={tmp_path / 'no-data'}")
    assert train_script.run(argv) == 2
    error = capsys.readouterr().err
    assert expected.format(**names) in error, error
    assert "does not exist" not in error                       # refused before reading data


EVALUATE_FLAG_CASES = [
    (["--max_users=0"], "--max_users: max_users must be a whole number >= 1"),
    (["--k=0"], "--k: k must be a whole number >= 1"),
    (["--ks=0,5"], "--ks: ks must be whole numbers >= 1"),
    (["--ks=abc"], "--ks: expected comma-separated int values"),
    (["--relevance_threshold=nan"], "--relevance_threshold"),
    (["--json={tmp}/missing/eval.json"], "--json: the folder of {tmp}/missing/eval.json does not"),
    (["--json={tmp}"], "--json: {tmp} is a folder; name a file"),
    (["--plot={tmp}/x.png", "--json={tmp}/x.png"], "--plot: --json and --plot name the same file"),
    (["--eval_split=train"], "--eval_split"),
    ([], "holds no export"),
]


@pytest.mark.parametrize("flags, expected", EVALUATE_FLAG_CASES,
                         ids=[" ".join(c[0]) or "no export" for c in EVALUATE_FLAG_CASES])
def test_bad_evaluate_flags(tmp_path, capsys, flags, expected):
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert evaluate_script.run(["tte-evaluate", f"--output_dir={tmp_path / 'none'}", *flags]) == 2
    assert expected.format(tmp=tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("script, flags, expected", [
    (index_script, ["--nlist=5", "--backend=exact"], "--nlist: applies to --backend=faiss-ivfpq"),
    (index_script, ["--hnsw_m=0", "--backend=faiss-hnsw"], "--hnsw_m"),
    (recommend_script, ["--k=0"], "--k"),
    (recommend_script, ["--feature=noequals"], "--feature: takes name=value"),
    (recommend_script, [], "holds no export"),
])
def test_bad_index_and_recommend_flags(tmp_path, capsys, script, flags, expected):
    assert script.run(["tte-x", f"--output_dir={tmp_path / 'none'}", *flags]) == 2
    assert expected in capsys.readouterr().err


def test_paths_expand_the_home_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    write(str(tmp_path / "home" / "data"), "Ratings.csv", "wrong\n")
    assert train_script.run(["tte-train", "--data_dir=~/data", "--output_dir=~/out",
                             "--tensorboard_dir=$HOME/logs"]) == 2
    assert f"{tmp_path}/home/data/Ratings.csv, line 1" in capsys.readouterr().err
    assert (tmp_path / "home" / "out").is_dir() and (tmp_path / "home" / "logs").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["home"]                # no folder named ~ or $HOME


# -- hostile export folders ---------------------------------------------------------------------

@pytest.fixture
def export_copy(exported, tmp_path):
    """A private copy of the session export, and an 'evil' export outside it."""
    root = str(tmp_path / "models")
    shutil.copytree(exported.output_dir, root)
    evil = str(tmp_path / "evil")
    shutil.copytree(exported.output_dir, evil)
    return root, evil


def manifest_of(root):
    return json.load(open(os.path.join(root, "manifest.json")))


def set_manifest(root, **changes):
    manifest = manifest_of(root)
    manifest.update(changes)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def read_everything(root):
    reader = ExportReader(root)
    reader.item_table, reader.users, reader.rated, reader.checkpoint()     # noqa: B018
    for model in ("user_tower", "item_tower", "scorer", "retrieval"):
        reader.saved_model(model)
    reader.index_folder("faiss-hnsw")
    return reader


def _tamper(root, evil, how):
    v = "1"
    emb = os.path.join(root, "item_embeddings", v)
    if how == "version traversal":
        set_manifest(root, version="../../evil/manifest")
    elif how == "version absolute":
        set_manifest(root, version=evil)
    elif how == "version zero":
        set_manifest(root, version=0)
    elif how == "version bool":
        set_manifest(root, version=True)
    elif how == "version float":
        set_manifest(root, version=1.5)
    elif how == "manifest not json":
        write(root, "manifest.json", "{not json")
    elif how == "manifest a list":
        write(root, "manifest.json", "[1, 2]")
    elif how == "manifest NaN":
        write(root, "manifest.json", open(os.path.join(root, "manifest.json")).read().replace(
            '"embedding_dim": 10', '"embedding_dim": NaN'))
    elif how == "manifest missing keys":
        write(root, "manifest.json", json.dumps({"version": 1}))
    elif how == "embedding_dim a string":
        set_manifest(root, embedding_dim="10")
    elif how == "input name a path":
        manifest = manifest_of(root)
        manifest["signatures"]["user_tower"]["inputs"]["../x"] = {"dtype": "string", "kind": "id"}
        write(root, "manifest.json", json.dumps(manifest))
    elif how == "input dtype unknown":
        manifest = manifest_of(root)
        manifest["signatures"]["user_tower"]["inputs"]["age"]["dtype"] = "int64"
        write(root, "manifest.json", json.dumps(manifest))
    elif how == "manifest symlink outside":
        os.remove(os.path.join(root, "manifest.json"))
        os.symlink(os.path.join(evil, "manifest.json"), os.path.join(root, "manifest.json"))
    elif how == "part folder symlink outside":
        shutil.rmtree(emb)
        os.symlink(os.path.join(evil, "item_embeddings", v), emb)
    elif how == "file symlink outside":
        os.remove(os.path.join(emb, "embeddings.npy"))
        os.symlink(os.path.join(evil, "item_embeddings", v, "embeddings.npy"),
                   os.path.join(emb, "embeddings.npy"))
    elif how == "link inside a SavedModel":
        variables = os.path.join(root, "user_tower", v, "variables")
        shutil.rmtree(variables)
        os.symlink(os.path.join(evil, "user_tower", v, "variables"), variables)
    elif how == "index folder symlink outside":
        os.makedirs(os.path.join(root, "index", "faiss-hnsw"))
        os.makedirs(os.path.join(evil, "index-target"))
        os.symlink(os.path.join(evil, "index-target"), os.path.join(root, "index", "faiss-hnsw", v))
    elif how == "embeddings truncated":
        path = os.path.join(emb, "embeddings.npy")
        open(path, "r+b").truncate(os.path.getsize(path) // 2)
    elif how == "embeddings NaN":
        array = np.load(os.path.join(emb, "embeddings.npy"))
        array[3, 1] = np.nan
        np.save(os.path.join(emb, "embeddings.npy"), array)
    elif how == "embeddings pickled":
        np.save(os.path.join(emb, "embeddings.npy"), np.array([{"a": 1}], dtype=object),
                allow_pickle=True)
    elif how == "embeddings wrong count":
        array = np.load(os.path.join(emb, "embeddings.npy"))
        np.save(os.path.join(emb, "embeddings.npy"), array[:-1])
    elif how == "item id with a line break":
        ids = open(os.path.join(emb, "item_ids.txt")).read().split("\n")
        ids[2] = ids[2] + "\nX"
        write(emb, "item_ids.txt", "\n".join(ids))
    elif how == "item ids truncated":
        path = os.path.join(emb, "item_ids.txt")
        open(path, "r+b").truncate(os.path.getsize(path) - 3)
    elif how == "items.csv other ids":
        path = os.path.join(emb, "items.csv")
        text = open(path).read().splitlines()
        text[1], text[2] = text[2], text[1]
        write(emb, "items.csv", "\n".join(text) + "\n")
    elif how.startswith("users.csv"):
        path = os.path.join(root, "users", v, "users.csv")
        users = pd.read_csv(path, dtype=str, keep_default_na=False)
        if how == "users.csv column missing":
            users = users.rename(columns={"age": "shoe_size"})
        elif how == "users.csv repeated id":
            users = pd.concat([users, users.head(1)])
        else:
            users.loc[0, "age"] = "old"
        users.to_csv(path, index=False)
    elif how == "rated.npz not a zip":
        write(os.path.join(root, "users", v), "rated.npz", b"garbage", "wb")
    elif how == "rated.npz rows out of range":
        path = os.path.join(root, "users", v, "rated.npz")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["rows"] = arrays["rows"] + 10 ** 6
        np.savez(path, **arrays)
    elif how == "rated.npz pickled ids":
        path = os.path.join(root, "users", v, "rated.npz")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["user_ids"] = arrays["user_ids"].astype(object)
        np.savez(path, **arrays)
    elif how == "vocabularies not json":
        write(os.path.join(root, "checkpoint", v), "vocabularies.json", "{")
    elif how == "weights NaN":
        path = os.path.join(root, "checkpoint", v, "weights.npz")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        key = sorted(arrays)[0]
        arrays[key] = np.full_like(arrays[key], np.nan)
        np.savez(path, **arrays)
    elif how == "part folder missing":
        shutil.rmtree(os.path.join(root, "users", v))
    elif how == "saved_model.pb missing":
        os.remove(os.path.join(root, "scorer", v, "saved_model.pb"))
    else:
        raise AssertionError(how)


EXPORT_CASES = [
    ("version traversal", "version must be a positive whole number"),
    ("version absolute", "version must be a positive whole number"),
    ("version zero", "version must be a positive whole number"),
    ("version bool", "version must be a positive whole number"),
    ("version float", "version must be a positive whole number"),
    ("manifest not json", "manifest.json: not a valid export manifest"),
    ("manifest a list", "manifest.json: expected a JSON object"),
    ("manifest NaN", "NaN is not allowed"),
    ("manifest missing keys", "missing embedding_dim, signatures, dataset, config"),
    ("embedding_dim a string", "embedding_dim must be a whole number"),
    ("input name a path", "'../x' is not a feature name"),
    ("input dtype unknown", "signatures.user_tower.inputs.age needs a dtype"),
    ("manifest symlink outside", "points outside the export folder"),
    ("part folder symlink outside", "points outside the export folder"),
    ("file symlink outside", "points outside the export folder"),
    ("link inside a SavedModel", "points outside the export folder"),
    ("index folder symlink outside", "points outside the export folder"),
    ("embeddings truncated", "embeddings.npy: damaged or not a numpy array file"),
    ("embeddings NaN", "embeddings.npy: holds NaN or infinite values"),
    ("embeddings pickled", "embeddings.npy: damaged or not a numpy array file"),
    ("embeddings wrong count", "but the manifest records"),
    ("item id with a line break", "item_ids.txt"),
    ("item ids truncated", "item_ids.txt: truncated"),
    ("items.csv other ids", "items.csv: its item_id column does not list the ids"),
    ("users.csv column missing", "users.csv: lacks the column(s) age"),
    ("users.csv repeated id", "users.csv: a user id appears more than once"),
    ("users.csv age not a number", "users.csv: column 'age' holds 'old'"),
    ("rated.npz not a zip", "rated.npz: damaged or not a numpy archive"),
    ("rated.npz rows out of range", "rated.npz: damaged: rows must be catalogue rows"),
    ("rated.npz pickled ids", "rated.npz: damaged or not a numpy archive"),
    ("vocabularies not json", "vocabularies.json: not a valid vocabulary file"),
    ("weights NaN", "weights.npz"),
    ("part folder missing", "users/1: missing or not a folder"),
    ("saved_model.pb missing", "scorer/1: not a SavedModel"),
]


@pytest.mark.parametrize("how, expected", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_a_hostile_or_damaged_export_is_refused_naming_the_file(export_copy, how, expected):
    root, evil = export_copy
    _tamper(root, evil, how)
    with pytest.raises(ExportError) as info:
        read_everything(root)
    assert expected in str(info.value)
    assert not isinstance(info.value, VersionGoneError)


def test_scripts_refuse_a_manifest_pointing_outside_and_write_nothing_there(export_copy, capsys):
    root, evil = export_copy
    set_manifest(root, version="../evil")
    before = sorted(os.listdir(evil))
    for script, name in ((recommend_script, "tte-recommend"), (evaluate_script, "tte-evaluate"),
                         (index_script, "tte-index")):
        assert script.run([name, f"--output_dir={root}", "--backend=exact",
                           *(["--user_id=1"] if script is recommend_script else [])]) == 2
        assert "version must be a positive whole number" in capsys.readouterr().err
    assert sorted(os.listdir(evil)) == before


def test_a_damaged_saved_model_is_a_message(export_copy, capsys):
    root, _ = export_copy
    write(os.path.join(root, "user_tower", "1"), "saved_model.pb", b"\x00garbage", "wb")
    assert recommend_script.run(["tte-recommend", f"--output_dir={root}", "--backend=exact",
                                 "--feature=age=30"]) == 2
    assert "user_tower/1: cannot be loaded as a SavedModel" in capsys.readouterr().err


def test_a_manifest_with_an_invalid_config_names_the_manifest(export_copy):
    from tte_tfrs.evaluation.evaluate import EvaluationConfig, evaluate
    root, _ = export_copy
    manifest = manifest_of(root)
    manifest["config"]["seed"] = -1
    write(root, "manifest.json", json.dumps(manifest))
    with pytest.raises(ExportError, match=r"manifest.json: damaged manifest: config.seed"):
        evaluate(EvaluationConfig(output_dir=root))
