"""Reader for a MovieLens 100K folder (u.data, u.user, u.item and the u1-u5 folds)."""


import numpy as np
import pandas as pd

from tte_tfrs.data import cleaning
from tte_tfrs.data.dataset import Dataset
from tte_tfrs.data.features import FeatureSpec
from tte_tfrs.data.files import decode_text, parse_delimited
from tte_tfrs.data.report import DataReport
from tte_tfrs.errors import DataError

RATING_SCALE = (1.0, 5.0)
DATA_COLUMNS = ("user id", "item id", "rating", "timestamp")
USER_COLUMNS = ("user id", "age", "gender", "occupation", "zip code")
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
ITEM_COLUMNS = ("movie id", "movie title", "release date", "video release date", "IMDb URL") + GENRES
AGE_BOUNDARIES = (4.0, 18.0, 21.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 56.0, 65.0, 100.0)
YEAR_BOUNDARIES = (1900.0, 1930.0, 1950.0, 1960.0, 1970.0, 1980.0, 1985.0, 1990.0, 1993.0, 1995.0,
                   1996.0, 1997.0, 1998.0, 2000.0)
FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


def user_features():
    return (
        FeatureSpec("user_id", "id", "MovieLens user id"),
        FeatureSpec("age", "number", "age in years", AGE_BOUNDARIES),
        FeatureSpec("gender", "category", "M or F"),
        FeatureSpec("occupation", "category", "occupation as in u.occupation"),
        FeatureSpec("zip", "category", "first two characters of the zip code"),
    )


def item_features():
    return (
        FeatureSpec("item_id", "id", "MovieLens movie id"),
        FeatureSpec("title", "text", "movie title without the year"),
        FeatureSpec("genres", "tags", "genres separated by '|'"),
        FeatureSpec("year", "number", "release year", YEAR_BOUNDARIES),
    )


def read_movielens(files, source):
    """Reads MovieLens 100K from the dict of `list_input_files`; folds come from uN.base/uN.test.

    Raises:
      DataError: u.data is missing or unusable.
    """
    report = DataReport()
    if "u.data" not in files:
        raise DataError(source, "no u.data found; a MovieLens 100K folder holds u.data, u.user, u.item")
    ratings = _read_ratings(files["u.data"], report)
    users = _read_users(files["u.user"], report) if "u.user" in files else _empty("user_id")
    items = _read_items(files["u.item"], report) if "u.item" in files else _empty("item_id")
    for missing in {"u.user", "u.item"} - set(files):
        report.warn(f"no {missing} in {source}: that tower uses ids alone")
    folds = {}
    for fold in FOLDS:
        if f"{fold}.base" in files and f"{fold}.test" in files:
            folds[fold] = (_read_ratings(files[f"{fold}.base"], report),
                           _read_ratings(files[f"{fold}.test"], report))
    return Dataset(
        name="movielens-100k", layout="movielens", source=str(source), ratings=ratings, users=users,
        items=items, user_features=user_features(), item_features=item_features(),
        rating_scale=RATING_SCALE, implicit_rating=None, report=report, folds=folds)


def _empty(key):
    return pd.DataFrame({key: pd.Series([], dtype=str)})


def _read(input_file, columns, sep, report, encoding="utf-8"):
    file_report = report.add_file(input_file.display)
    text = decode_text(input_file.read_bytes(), file_report, preferred=encoding)
    values, lines = parse_delimited(text, input_file, file_report, columns, sep, has_header=False)
    frame = pd.DataFrame({name: pd.Series(col, dtype=object) for name, col in zip(columns, values)})
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame, file_report


def _read_ratings(input_file, report):
    frame, file_report = _read(input_file, DATA_COLUMNS, "\t", report)
    frame = frame.rename(columns={"user id": "user_id", "item id": "item_id"})
    frame = cleaning.clean_ratings(frame, input_file.display, file_report, DATA_COLUMNS[:3],
                                   RATING_SCALE)
    frame = cleaning.drop_duplicates(frame, ["user_id", "item_id"], file_report,
                                     "duplicate (user id, item id) pair; the last one is kept")
    file_report.rows_kept = len(frame)
    return frame[["user_id", "item_id", "rating", "line"]].reset_index(drop=True)


def _read_users(input_file, report):
    frame, file_report = _read(input_file, USER_COLUMNS, "|", report)
    frame = frame.rename(columns={"user id": "user_id", "zip code": "zip"})
    frame = cleaning.clean_ids(frame, "user_id", "", file_report, "user id")
    spec = {s.name: s for s in user_features()}
    frame["age"] = cleaning.clean_number(frame, "age", spec["age"], file_report, "age")
    frame["zip"] = frame["zip"].str.strip().str.upper().str[:2]
    frame = cleaning.drop_duplicates(frame, ["user_id"], file_report,
                                     "duplicate user id; the first one is kept", keep="first")
    file_report.rows_kept = len(frame)
    return frame[["user_id", "age", "gender", "occupation", "zip"]].reset_index(drop=True)


def _read_items(input_file, report):
    frame, file_report = _read(input_file, ITEM_COLUMNS, "|", report, encoding="latin-1")
    frame = frame.rename(columns={"movie id": "item_id"})
    frame = cleaning.clean_ids(frame, "item_id", "", file_report, "movie id")
    title = frame["movie title"].str.strip()
    year_in_title = title.str.extract(r"\((\d{4})\)\s*$", expand=False)
    frame["title"] = title.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    release_year = frame["release date"].str.strip().str[-4:]
    frame["year"] = release_year.where(release_year.str.fullmatch(r"\d{4}"), year_in_title)
    frame["year"] = frame["year"].fillna("")
    spec = {s.name: s for s in item_features()}
    frame["year"] = cleaning.clean_number(frame, "year", spec["year"], file_report, "release year")
    flags = frame[list(GENRES)].apply(lambda col: col.str.strip() == "1").to_numpy()
    names = np.asarray(GENRES, dtype=object)
    frame["genres"] = ["|".join(names[row]) for row in flags]
    frame = cleaning.drop_duplicates(frame, ["item_id"], file_report,
                                     "duplicate movie id; the first one is kept", keep="first")
    file_report.rows_kept = len(frame)
    return frame[["item_id", "title", "genres", "year"]].reset_index(drop=True)
