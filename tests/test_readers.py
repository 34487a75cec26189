"""Readers on messy input: every kind of mess is handled and counted, unusable files stop clearly."""

import gzip
import os
import zipfile

import numpy as np
import pytest

from tte_tfrs import DataError, load_dataset
from tte_tfrs.data import DEFAULT_DATA_DIR
from tte_tfrs.data.synthetic import SyntheticConfig, write_bookcrossing

BOOKS_HEADER = ("ISBN,Book-Title,Book-Author,Year-Of-Publication,Publisher,Image-URL-S,Image-URL-M,"
                "Image-URL-L\n")


def write(folder, name, text, encoding="utf-8"):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(text.encode(encoding))
    return path


def kaggle_folder(tmp_path, ratings=None, users=None, books=None):
    folder = str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    write(folder, "Ratings.csv", ratings if ratings is not None else (
        "User-ID,ISBN,Book-Rating\n"
        "1,0195153448,8\n"            # line 2: fine
        "2, 0-19-515344-8 ,7\n"       # line 3: the same book spelled with spaces and hyphens
        "1,034545104x,11\n"           # line 4: rating out of range
        "1,034545104X,-1\n"           # line 5: rating out of range
        "3,034545104X,abc\n"          # line 6: not a number
        "3,034545104X,5,extra\n"      # line 7: malformed
        "3,034545104X,6\n"            # line 8
        "3,034545104X,9\n"            # line 9: duplicate pair; this one is kept
        "99,0195153448,0\n"           # line 10: implicit; user not in Users.csv
        "2,9999999999,4\n"            # line 11: ISBN not in Books.csv
        "x7,0195153448,4\n"           # line 12: user id not a number
        "4,.,3\n"))                   # line 13: ISBN with no letters or digits
    write(folder, "Users.csv", users if users is not None else (
        "User-ID,Location,Age\n"
        '1,"nyc, new york, usa",\n'               # line 2: empty age
        '2,"stockton, california, usa",18.0\n'     # line 3
        '3,"porto, v.n.gaia, portugal",0\n'        # line 4: age 0
        '4,"n/a, n/a, ",244\n'                     # line 5: age 244, no country
        '4,"dup, dup, usa",30\n'))                 # line 6: duplicate id
    if books is not False:
        write(folder, "Books.csv", books if books is not None else (
            BOOKS_HEADER
            + '0195153448,Classical Mythology,Mark P. O. Morford,2002,Oxford University Press,a,b,c\n'
            + '034545104X,"Flu: The Story, &amp; more",Gina Kolata,0,Picador,a,b,c\n'
            + '0000000001,"Future \\"Book\\"",Someone,2999,Nobody,a,b,c\n'
            + '078946697X,"DK Readers\\";Michael Teitelbaum""",2000,DK Publishing Inc,'
              'http://x/S.jpg,http://x/M.jpg,http://x/L.jpg,\n'
            + '0195153448,Duplicate,X,1999,Y,a,b,c\n'))
    return folder


def file_report(dataset, suffix):
    return next(f for f in dataset.report.files if f.path.endswith(suffix))


def test_kaggle_messy_ratings_are_cleaned_and_counted(tmp_path):
    ds = load_dataset(kaggle_folder(tmp_path))
    ratings = file_report(ds, "Ratings.csv")
    assert ratings.rows_read == 12
    assert ratings.dropped["Book-Rating outside the rating scale 0-10"] == 2
    assert ratings.examples["Book-Rating outside the rating scale 0-10"] == [4, 5]
    assert ratings.dropped["Book-Rating is not a number"] == 1
    assert ratings.dropped["malformed line (expected 3 fields)"] == 1
    assert ratings.examples["malformed line (expected 3 fields)"] == [7]
    assert ratings.dropped["User-ID is not a whole number"] == 1
    assert ratings.dropped["ISBN has no letters or digits"] == 1
    assert ratings.examples["duplicate (User-ID, ISBN) pair; the last one is kept"] == [8]
    assert ratings.rows_kept == len(ds.ratings) == 5
    kept = {(u, i): r for u, i, r in ds.ratings[["user_id", "item_id", "rating"]].itertuples(
        index=False)}
    assert kept[("3", "034545104X")] == 9.0
    assert kept[("2", "0195153448")] == 7.0           # spaces and hyphens normalised away
    assert ("99", "0195153448") in kept               # user not in Users.csv: kept
    assert ("2", "9999999999") in kept                # ISBN not in Books.csv: kept
    assert ds.report.counts["ratings whose user is not in the users table (kept)"] == 1
    assert ds.report.counts["ratings whose ISBN is not in the books table (kept)"] == 1
    assert ds.counts()["implicit_ratings"] == 1


def test_kaggle_messy_users(tmp_path):
    ds = load_dataset(kaggle_folder(tmp_path))
    users = file_report(ds, "Users.csv")
    assert users.fixed["Age empty -> unknown"] == 1
    assert users.fixed["Age outside 4-100 (e.g. 0) -> unknown"] == 2
    assert users.fixed["Location has no country -> unknown"] == 1
    assert users.dropped["duplicate User-ID; the first one is kept"] == 1
    table = ds.users.set_index("user_id")
    assert np.isnan(table.loc["3", "age"]) and np.isnan(table.loc["4", "age"])
    assert table.loc["2", "age"] == 18.0
    assert table.loc["1", "location"] == "nyc, new york, usa"


def test_kaggle_messy_books(tmp_path):
    ds = load_dataset(kaggle_folder(tmp_path))
    books = file_report(ds, "Books.csv")
    assert books.fixed["Year-Of-Publication outside 1000-" + str(
        int(ds.item_features[-1].boundaries[-1])) + " (e.g. 0) -> unknown"] == 2
    assert books.fixed["Year-Of-Publication not a number -> unknown"] == 1
    assert books.fixed["Publisher is a URL (columns shifted by a quote in the title) -> unknown"] == 1
    assert books.dropped["duplicate ISBN; the first one is kept"] == 1
    table = ds.items.set_index("item_id")
    assert table.loc["034545104X", "title"] == "Flu: The Story, & more"
    assert table.loc["0195153448", "title"] == "Classical Mythology"
    assert np.isnan(table.loc["034545104X", "year"])
    assert table.loc["078946697X", "publisher"] == ""


def test_missing_books_file_warns_and_uses_isbn_alone(tmp_path):
    ds = load_dataset(kaggle_folder(tmp_path, books=False))
    assert [s.name for s in ds.item_features] == ["item_id"]
    assert any("no books file" in w for w in ds.report.warnings)
    assert len(ds.ratings) == 5


def test_wrong_columns_stop_with_file_and_line(tmp_path):
    folder = kaggle_folder(tmp_path, ratings="user,book,score\n1,2,3\n")
    with pytest.raises(DataError) as info:
        load_dataset(folder)
    message = str(info.value)
    assert "Ratings.csv, line 1" in message and "User-ID,ISBN,Book-Rating" in message


def test_non_numeric_rating_column_stops_with_first_line(tmp_path):
    folder = kaggle_folder(tmp_path, ratings="User-ID,ISBN,Book-Rating\n1,0195153448,good\n"
                                             "2,0195153448,bad\n3,0195153448,5\n")
    with pytest.raises(DataError) as info:
        load_dataset(folder)
    assert "Ratings.csv, line 2, field 'Book-Rating'" in str(info.value)
    assert "'good'" in str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="holds no known data set"):
        load_dataset(str(tmp_path))


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(kaggle_folder(tmp_path), dataset="netflix")


def test_latin1_bytes_in_a_utf8_file_are_decoded_and_noted(tmp_path):
    folder = kaggle_folder(tmp_path)
    write(folder, "Users.csv", 'User-ID,Location,Age\n1,"köln, nrw, germany",30\n', "latin-1")
    ds = load_dataset(folder)
    users = file_report(ds, "Users.csv")
    assert any("decoded as latin-1" in note for note in users.notes)
    assert ds.users["location"].iloc[0] == "köln, nrw, germany"


def test_original_bx_layout_latin1_semicolons_escapes_gzip_and_zip(tmp_path):
    folder = str(tmp_path)
    write(folder, "BX-Users.csv", '"User-ID";"Location";"Age"\n"1";"münchen, bayern, germany";"25"\n'
          '"2";"nyc, new york, usa";NULL\n', "latin-1")
    with gzip.open(os.path.join(folder, "BX-Book-Ratings.csv.gz"), "wb") as f:
        f.write(b'"User-ID";"ISBN";"Book-Rating"\n"1";"0195153448";"8"\n"2";"0195153448";"0"\n')
    books = ('"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";'
             '"Image-URL-M";"Image-URL-L"\n"0195153448";"A \\"quoted\\" title; with a semicolon";'
             '"Mark";"2002";"Oxford";"a";"b";"c"\n')
    with zipfile.ZipFile(os.path.join(folder, "BX-Books.csv.zip"), "w") as z:
        z.writestr("BX-Books.csv", books.encode("latin-1"))
    ds = load_dataset(folder)
    assert ds.layout == "bx"
    assert ds.items["title"].iloc[0] == 'A "quoted" title; with a semicolon'
    assert ds.users.set_index("user_id").loc["1", "location"] == "münchen, bayern, germany"
    assert np.isnan(ds.users.set_index("user_id").loc["2", "age"])
    assert ds.counts()["explicit_ratings"] == 1


def test_kaggle_archive_zip_read_as_it_is(tmp_path):
    source = kaggle_folder(tmp_path / "src")
    archive = str(tmp_path / "archive.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("Ratings.csv", "Users.csv"):
            z.write(os.path.join(source, name), name)
    for path in (archive, str(tmp_path)):
        ds = load_dataset(path)
        assert ds.layout == "kaggle" and len(ds.ratings) == 5
        assert file_report(ds, "archive.zip:Ratings.csv").rows_read == 12


def test_several_layouts_prefer_kaggle_and_dataset_forces(tmp_path):
    folder = kaggle_folder(tmp_path)
    write(folder, "BX-Book-Ratings.csv", "User-ID;ISBN;Book-Rating\n1;0195153448;3\n")
    ds = load_dataset(folder)
    assert ds.layout == "kaggle"
    assert any("several layouts" in w for w in ds.report.warnings)
    forced = load_dataset(folder, dataset="bx")
    assert forced.layout == "bx" and len(forced.ratings) == 1
    with pytest.raises(DataError, match="--dataset=movielens"):
        load_dataset(folder, dataset="movielens")


def test_movielens_layout_with_folds(tmp_path):
    folder = str(tmp_path)
    write(folder, "u.data", "1\t10\t4\t881250949\n2\t10\t6\t881250949\n2\t11\t3\t881250950\n")
    write(folder, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    write(folder, "u.item", "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0"
          "|0|0|0|0|0\n11|Heat (1995)|||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n", "latin-1")
    write(folder, "u1.base", "1\t10\t4\t881250949\n")
    write(folder, "u1.test", "2\t11\t3\t881250950\n")
    ds = load_dataset(folder)
    assert ds.layout == "movielens"
    assert file_report(ds, "u.data").dropped["rating outside the rating scale 1-5"] == 1
    items = ds.items.set_index("item_id")
    assert items.loc["10", "title"] == "Toy Story"
    assert items.loc["10", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["11", "year"] == 1995.0          # from the title when the date is empty
    assert set(ds.folds) == {"u1"} and len(ds.folds["u1"][1]) == 1


def test_embedded_data_is_what_the_generator_makes(tmp_path):
    write_bookcrossing(str(tmp_path), SyntheticConfig())
    for name in ("Books.csv", "Users.csv", "Ratings.csv"):
        with open(os.path.join(DEFAULT_DATA_DIR, name), "rb") as committed, \
                open(tmp_path / name, "rb") as generated:
            assert committed.read() == generated.read(), name


def test_embedded_data_has_every_kind_of_mess():
    ds = load_dataset()
    dropped = {reason for f in ds.report.files for reason in f.dropped}
    fixed = {reason for f in ds.report.files for reason in f.fixed}
    assert {"malformed line (expected 3 fields)", "Book-Rating outside the rating scale 0-10",
            "Book-Rating is not a number", "duplicate (User-ID, ISBN) pair; the last one is kept",
            "duplicate User-ID; the first one is kept", "duplicate ISBN; the first one is kept"} <= dropped
    assert {"Age empty -> unknown", "Location has no country -> unknown",
            "Year-Of-Publication not a number -> unknown", "Book-Title HTML entity unescaped",
            "ISBN normalised (spaces, punctuation, lower-case x removed)"} <= fixed
    assert ds.report.counts["ratings whose ISBN is not in the books table (kept)"] > 0
    assert ds.report.counts["ratings whose user is not in the users table (kept)"] > 0


def test_year_buckets_do_not_depend_on_the_date():
    from tte_tfrs.data import bookcrossing
    (year,) = [s for s in bookcrossing.item_features(with_books=True) if s.name == "year"]
    assert year.boundaries == bookcrossing.YEAR_BOUNDARIES and year.boundaries[-1] == 2026.0


def test_unsafe_ids_are_dropped_and_counted(tmp_path):
    folder = kaggle_folder(tmp_path, ratings="User-ID,ISBN,Book-Rating\n1,0195153448,8\n"
                           f'2,"0195\n153448",7\n3,{"9" * 70},5\n' + "".join(
                               f"{n},03454510{n:02d},6\n" for n in range(4, 40)))
    ratings = file_report(load_dataset(folder), "Ratings.csv")
    assert ratings.dropped["ISBN contains a control character (such as a line break)"] == 1
    assert ratings.examples["ISBN is longer than 64 characters"] == [5]


def test_a_ratings_file_alone_trains(tmp_path, capsys):
    from tte_tfrs.scripts import train as train_script
    folder = tmp_path / "ten"
    folder.mkdir()
    (folder / "Ratings.csv").write_text("User-ID,ISBN,Book-Rating\n" + "".join(
        f"{n},00000000{n % 10},{n % 10 + 1}\n" for n in range(10)))
    assert train_script.run(["tte-train", f"--data_dir={folder}", f"--output_dir={tmp_path / 'o'}",
                             "--epochs=1", "--verbose=0"]) == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "manifest.json").exists()
