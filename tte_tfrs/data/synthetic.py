"""A deterministic Book-Crossing-format data set with a planted user/item structure.

The embedded default data in ``data/book-crossing/`` is made by `write_bookcrossing` with the default
`SyntheticConfig`; ``python -m tte_tfrs.data.synthetic --out data/book-crossing`` remakes it byte for
byte. Ratings follow

    r = clip(round(mu + b_u + b_i + <p_u, q_i> + noise), 1, 10)

where the user factors p_u come from country and age group plus a personal part, and the item factors
q_i from genre and author plus a personal part, so features carry signal for new users and books. The
generator also plants the mess of the real files (see `MESS`) so the readers are exercised.
"""

import csv
import dataclasses
import itertools
import math
import os

import numpy as np

COUNTRIES = (("usa", ("california", "texas", "new york", "oregon", "florida")),
             ("canada", ("ontario", "quebec", "british columbia")),
             ("united kingdom", ("england", "scotland", "wales")),
             ("germany", ("bayern", "berlin", "hessen")),
             ("spain", ("madrid", "catalunya")),
             ("australia", ("victoria", "queensland")),
             ("france", ("ile de france", "rhone alpes")),
             ("portugal", ("porto", "lisboa")))
COUNTRY_WEIGHTS = (0.45, 0.12, 0.1, 0.09, 0.07, 0.07, 0.05, 0.05)
CITIES = ("springfield", "riverside", "franklin", "greenville", "bristol", "clinton", "fairview",
          "salem", "madison", "georgetown")
GENRES = {
    "mystery": ("murder", "detective", "secret", "shadow", "case", "midnight", "clue", "alibi"),
    "romance": ("love", "heart", "kiss", "bride", "summer", "promise", "passion", "forever"),
    "fantasy": ("dragon", "sword", "wizard", "kingdom", "magic", "quest", "crown", "realm"),
    "science": ("universe", "quantum", "brain", "evolution", "energy", "cosmos", "atom", "gene"),
    "history": ("empire", "war", "revolution", "century", "king", "battle", "republic", "ancient"),
    "children": ("bunny", "little", "adventure", "friends", "puppy", "garden", "moon", "bear"),
}
FILLER = ("the", "of", "a", "and", "in", "last", "first", "new", "great", "lost", "return")
FIRST_NAMES = ("Anna", "John", "Maria", "Peter", "Laura", "David", "Sofia", "James", "Elena",
               "Michael", "Chloé", "José", "Zoë", "Björn", "Ines", "Thomas")
LAST_NAMES = ("Smith", "Garcia", "Müller", "Brown", "Martin", "Rossi", "Novak", "Kowalski",
              "Dubois", "Silva", "Jensen", "O'Neil", "Nakamura", "Fischer", "Lopez", "Evans")
PUBLISHERS = ("Penguin Books", "Ballantine Books", "HarperCollins", "Simon &amp; Schuster",
              "Bantam", "Vintage", "Tor Books", "Scholastic", "Oxford University Press",
              "Little, Brown", "Random House", "Berkley Publishing Group")
AGE_GROUPS = ((13, 18), (18, 25), (25, 35), (35, 50), (50, 65), (65, 80))

MESS = (
    "ages of 0 and 244, empty and non-numeric ages",
    "locations without a country (', , ', 'n/a') and a duplicate User-ID",
    "ISBNs with spaces, hyphens and a lower-case x",
    "publication years of 0, in the future, and a row whose columns shifted",
    "HTML entities, commas and quotes in titles and publishers; non-ASCII author names",
    "ratings of 11, -1 and 'abc'; a line with an extra field; duplicate (user, ISBN) pairs",
    "ratings whose ISBN is not in Books.csv and whose user is not in Users.csv",
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and noise of the generated data set.

    Attributes:
      n_users: users in Users.csv (a few more appear only in Ratings.csv).
      n_items: books in Books.csv (a few more appear only in Ratings.csv).
      n_interactions: (user, book) pairs before implicit ones are marked.
      latent_dim: dimension of the planted factors.
      noise: standard deviation of the rating noise before rounding.
      implicit_fraction: share of interactions written with rating 0.
      seed: seeds everything; same seed, same bytes.
    """

    n_users: int = 1500
    n_items: int = 1000
    n_interactions: int = 80000
    latent_dim: int = 4
    noise: float = 1.0
    implicit_fraction: float = 0.4
    seed: int = 2024


@dataclasses.dataclass
class PlantedTruth:
    """The planted model: per-interaction expected score before noise, by (user id, ISBN)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    score: np.ndarray
    noise: float

    def expected_rating(self):
        """E[clip(round(score + noise), 1, 10)]: the best any model can predict."""
        return expected_rounded_clipped(self.score, self.noise)

    def lookup(self):
        return {(u, i): k for k, (u, i) in enumerate(zip(self.user_ids, self.item_ids))}

    def best_predictions(self, ratings):
        """(observed, best possible prediction) for the rows of `ratings` (user_id, item_id,
        rating) that the truth knows; the planted mess adds a few it does not."""
        lookup, expected = self.lookup(), self.expected_rating()
        found = [lookup.get(key) for key in zip(ratings["user_id"], ratings["item_id"])]
        known = np.array([f is not None for f in found], dtype=bool)
        return (ratings["rating"].to_numpy()[known],
                expected[[f for f in found if f is not None]])

    def noise_floor(self, ratings):
        """RMSE of the best possible prediction on `ratings`: no model can do better."""
        observed, best = self.best_predictions(ratings)
        return float(np.sqrt(np.mean((observed - best) ** 2)))


def expected_rounded_clipped(score, sigma, low=1, high=10):
    """Expectation of clip(round(score + N(0, sigma^2)), low, high), computed exactly."""
    erf = np.vectorize(math.erf)
    cdf = lambda x: 0.5 * (1.0 + erf(x / (sigma * math.sqrt(2.0))))  # noqa: E731
    expected = np.full(score.shape, float(low))
    for value in range(low + 1, high + 1):
        # P(round(score+e) >= value) = P(score + e >= value - 0.5)
        expected += 1.0 - cdf(value - 0.5 - score)
    return expected


def generate(config=SyntheticConfig()):
    """Builds the three tables in memory.

    Returns:
      (books, users, ratings, truth): lists of rows (strings) in Kaggle column order, with the
      planted mess, and the `PlantedTruth` of every explicit rating.
    """
    tables = _Tables(config)
    books, users = list(tables.books()), list(tables.users())
    ratings = list(tables.ratings())
    _plant_mess(books, users, ratings, None)
    return books, users, ratings, tables.truth


class _Tables:
    """The planted model and the rows drawn from it, made one row at a time (the books' and then
    the users' rows draw from the random generator, so they are made in that order)."""

    def __init__(self, config):
        rng = self.rng = np.random.default_rng(config.seed)
        self.config = config
        d = config.latent_dim
        genre_names = self.genre_names = list(GENRES)
        genre_factor = rng.normal(0.0, 0.8, (len(genre_names), d))
        country_factor = rng.normal(0.0, 0.6, (len(COUNTRIES), d))
        age_factor = rng.normal(0.0, 0.6, (len(AGE_GROUPS), d))
        country_bias = rng.normal(0.0, 0.3, len(COUNTRIES))

        # Users.
        country = self.country = rng.choice(len(COUNTRIES), config.n_users, p=COUNTRY_WEIGHTS)
        age_group = rng.choice(len(AGE_GROUPS), config.n_users, p=(0.1, 0.2, 0.25, 0.25, 0.15, 0.05))
        self.age = np.array([rng.integers(*AGE_GROUPS[g]) for g in age_group])
        user_factor = (country_factor[country] + age_factor[age_group]
                       + rng.normal(0, 0.4, (config.n_users, d)))
        user_bias = country_bias[country] + rng.normal(0.0, 0.6, config.n_users)
        # Drawing from a range by its size (not np.arange) gives the same numbers without the array.
        user_ids = self.user_ids = np.sort(1 + rng.choice(10 * config.n_users - 1, config.n_users,
                                                          replace=False))

        # Authors and books.
        n_authors = max(config.n_items // 8, len(genre_names))
        author_genre = rng.choice(len(genre_names), n_authors)
        author_factor = rng.normal(0.0, 0.3, (n_authors, d))
        author_bias = rng.normal(0.0, 0.5, n_authors)
        self.author_names = [f"{FIRST_NAMES[rng.integers(len(FIRST_NAMES))]} "
                             f"{LAST_NAMES[rng.integers(len(LAST_NAMES))]}" for _ in range(n_authors)]
        author = self.author = rng.choice(n_authors, config.n_items)
        genre = self.genre = author_genre[author]
        item_factor = genre_factor[genre] + author_factor[author] + rng.normal(0, 0.3, (config.n_items, d))
        item_bias = author_bias[author] + rng.normal(0.0, 0.4, config.n_items)
        isbn_numbers = 10**8 + rng.choice(9 * 10**8, config.n_items, replace=False)
        isbns = self.isbns = [f"0{n}" if k % 11 else f"0{str(n)[:-1]}X"
                              for k, n in enumerate(isbn_numbers)]
        self.years = rng.integers(1950, 2005, config.n_items)

        # Interactions: activity and popularity are skewed as in real data.
        activity = rng.lognormal(0.0, 1.0, config.n_users)
        popularity = rng.lognormal(0.0, 1.0, config.n_items)
        users_of = rng.choice(config.n_users, 2 * config.n_interactions, p=activity / activity.sum())
        items_of = rng.choice(config.n_items, 2 * config.n_interactions, p=popularity / popularity.sum())
        pairs = np.unique(np.stack([users_of, items_of], axis=1), axis=0)
        del users_of, items_of
        pairs = pairs[rng.permutation(len(pairs))[: config.n_interactions]]
        u, i = self.u, self.i = pairs[:, 0], pairs[:, 1]
        score = 7.0 + user_bias[u] + item_bias[i] + np.sum(user_factor[u] * item_factor[i], axis=1)
        rating = np.clip(np.rint(score + rng.normal(0.0, config.noise, len(u))), 1, 10).astype(int)
        implicit = rng.random(len(u)) < config.implicit_fraction
        rating[implicit] = 0
        self.rating = rating
        explicit = ~implicit
        self.truth = PlantedTruth(user_ids=np.array([str(user_ids[a]) for a in u[explicit]]),
                                  item_ids=np.array([isbns[b] for b in i[explicit]]),
                                  score=score[explicit], noise=config.noise)

    def books(self):
        rng = self.rng
        for k in range(self.config.n_items):
            words = GENRES[self.genre_names[self.genre[k]]]
            title_words = [FILLER[rng.integers(len(FILLER))].capitalize(),
                           words[rng.integers(len(words))].capitalize(),
                           FILLER[rng.integers(len(FILLER))],
                           words[rng.integers(len(words))].capitalize()]
            publisher = PUBLISHERS[rng.integers(len(PUBLISHERS))]
            url = f"http://images.example.org/P/{self.isbns[k]}"
            yield [self.isbns[k], " ".join(title_words), self.author_names[self.author[k]],
                   str(self.years[k]), publisher, url + ".S.jpg", url + ".M.jpg", url + ".L.jpg"]

    def users(self):
        rng = self.rng
        for k in range(self.config.n_users):
            name, states = COUNTRIES[self.country[k]]
            location = f"{CITIES[rng.integers(len(CITIES))]}, {states[rng.integers(len(states))]}, {name}"
            shown_age = f"{self.age[k]:.1f}" if rng.random() > 0.35 else ""
            yield [str(self.user_ids[k]), location, shown_age]

    def ratings(self, start=0):
        user_ids, isbns = self.user_ids, self.isbns
        for a, b, r in zip(self.u[start:], self.i[start:], self.rating[start:]):
            yield [str(user_ids[a]), isbns[b], str(r)]


def _plant_mess(books, users, ratings, rng=None):
    """Adds the kinds of damage the real Book-Crossing files have, at fixed places."""
    _users_mess(users)
    _books_mess(books)
    ratings.extend(_ratings_mess(ratings, books, users))


def _users_mess(users):
    # Users: impossible and missing ages, locations without a country, a duplicate id.
    users[3][2], users[7][2], users[11][2], users[13][2] = "0.0", "244.0", "", "abc"
    users[17][1], users[19][1] = "springfield, , ", "n/a, n/a, n/a"
    users.insert(25, [users[24][0], "riverside, ontario, canada", "33.0"])


def _books_mess(books):
    # Books: odd years, a shifted row, entities and quotes, a duplicate ISBN.
    books[5][3], books[9][3] = "0", "2050"
    # As in Kaggle's Books.csv: an escaped quote merged the author into the title, so every later
    # column moved one to the left (the year lands under Book-Author, a URL under Publisher).
    row = books[12]
    books[12] = [row[0], f'{row[1]}\\";{row[2]}"', row[3], row[4], row[5], row[6], row[7], ""]
    books[15][1] = 'Cats &amp; Dogs: "Friends", Forever'
    books.insert(20, [books[19][0], "A Duplicate Entry", "Someone", "1999", "Vintage", "", "", ""])


def _ratings_mess(ratings, books, users):
    """Damages the first ratings in place; returns the rows to add at the end of the file."""
    # Ratings: messy ISBN spellings of existing books, bad ratings, duplicates, unknown ids.
    isbn = ratings[30][1]
    ratings[30][1] = f" {isbn[:1]}-{isbn[1:4]}-{isbn[4:9]}-{isbn[9:]}"
    ratings[31][1] = ratings[31][1].lower() + " "
    ratings[40][2], ratings[41][2], ratings[42][2] = "11", "-1", "abc"
    appended = [[ratings[k][0], ratings[k][1], "5"] for k in (50, 51, 52)]
    for k in range(5):
        appended.append([str(10**7 + k), books[k][0], "8"])          # user not in Users.csv
        appended.append([users[k][0], f"99999{k:05d}", "7"])         # ISBN not in Books.csv
    ratings.insert(60, ratings[60] + ["extra"])
    return appended


def write_bookcrossing(out_dir, config=SyntheticConfig(), layout="kaggle"):
    """Writes Books, Users and Ratings in the Kaggle (``,`` UTF-8) or BX (``;`` latin-1) layout.

    The rows are made and written a few at a time, so large data sets fit in memory (the same
    bytes as writing `generate`'s tables).

    Returns:
      The `PlantedTruth` of the explicit ratings.
    """
    from tte_tfrs.data.bookcrossing import BOOKS_COLUMNS, RATINGS_COLUMNS, USERS_COLUMNS
    if layout == "kaggle":
        names, delimiter, encoding = ("Books.csv", "Users.csv", "Ratings.csv"), ",", "utf-8"
    elif layout == "bx":
        names, delimiter, encoding = (("BX-Books.csv", "BX-Users.csv", "BX-Book-Ratings.csv"), ";",
                                      "latin-1")
    else:
        raise ValueError(f"layout must be 'kaggle' or 'bx', got {layout!r}")
    tables = _Tables(config)
    os.makedirs(out_dir, exist_ok=True)
    books = tables.books()
    books_head = [next(books) for _ in range(min(HEAD, config.n_items))]
    _books_mess(books_head)
    _write_table(os.path.join(out_dir, names[0]), BOOKS_COLUMNS, [books_head, books], delimiter,
                 False, encoding)
    users = tables.users()
    users_head = [next(users) for _ in range(min(HEAD, config.n_users))]
    _users_mess(users_head)
    _write_table(os.path.join(out_dir, names[1]), USERS_COLUMNS, [users_head, users], delimiter,
                 layout == "bx", encoding)
    head = min(HEAD, len(tables.u))
    ratings_head = list(itertools.islice(tables.ratings(), head))
    appended = _ratings_mess(ratings_head, books_head, users_head)
    _write_table(os.path.join(out_dir, names[2]), RATINGS_COLUMNS,
                 [ratings_head, tables.ratings(head), appended], delimiter, layout == "bx", encoding)
    return tables.truth


HEAD = 64           # rows made in memory first, where the mess is planted


def _write_table(path, header, parts, delimiter, quote_all, encoding, chunk=1 << 16):
    with open(path, "w", encoding=encoding, errors="replace", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n",
                            quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
        writer.writerow(header)
        for part in parts:
            part = iter(part)
            while rows := list(itertools.islice(part, chunk)):
                writer.writerows(rows)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--layout", default="kaggle", choices=("kaggle", "bx"))
    args = parser.parse_args(argv)
    write_bookcrossing(args.out, layout=args.layout)


if __name__ == "__main__":
    main()
