"""Sample rows the tests write themselves, in the formats of the real ones in ``../shared/data``.

A clone without ``../shared`` runs every sample-row test on these; only real-row fidelity needs the real
files. The counts match the real sample (see its README) so row-count assertions hold for both sources.
"""

from __future__ import annotations

from pathlib import Path

from ctrzoo.synth import generate

CRITEO_ROWS = 200
TAOBAO_ROWS = 100
FILES = ("criteo_sample.tsv", "criteo_sample.txt", "taobao_ad_sample.csv")
CRITEO_HEADER = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
# The real CSV writes integers as floats (`260.0`), except I2, the column with the negative codes (`-1`).
CSV_PLAIN_INTEGERS = {"I2"}


def criteo_tsv_to_csv(tsv: Path, out: Path) -> Path:
    """The same rows as comma-separated text with a header and the integer columns written as floats."""
    as_float = [name.startswith("I") and name not in CSV_PLAIN_INTEGERS for name in CRITEO_HEADER]
    lines = [",".join(CRITEO_HEADER)]
    for line in tsv.read_text().splitlines():
        fields = line.split("\t")
        lines.append(",".join(f"{v}.0" if v and f else v for v, f in zip(fields, as_float, strict=True)))
    out.write_text("\n".join(lines) + "\n")
    return out


GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def write_movielens(path: Path, rows: int = 200, seed: int = 1) -> Path:
    """MovieLens-1M ratings joined with users and movies, as in ``../shared/data/movielens_sample.txt``:
    ``user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip``; titles with commas are quoted,
    ``genres`` is ``|``-joined, ratings 1-5 depend on the user and the movie's genres."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    movies = rng.integers(1, 3900, 150)
    genres = ["|".join(sorted(rng.choice(GENRES, size=int(k), replace=False))) for k in rng.integers(1, 4, 150)]
    titles = [f"Movie {m}, The ({1930 + m % 70})" if m % 4 == 0 else f"Movie {m} ({1930 + m % 70})" for m in movies]
    users = rng.integers(1, 6040, 160)
    likes = {u: rng.choice(GENRES) for u in users}
    u = rng.choice(users, rows)
    k = rng.integers(0, 150, rows)
    base = rng.normal(3.4, 0.9, rows) + np.array([likes[a] in genres[b] for a, b in zip(u, k)]) * 1.2
    table = pa.table({
        "user_id": u, "movie_id": movies[k], "rating": np.clip(np.rint(base), 1, 5).astype(np.int64),
        "timestamp": rng.integers(956_703_932, 1_046_454_590, rows),
        "title": [titles[i] for i in k], "genres": [genres[i] for i in k],
        "gender": rng.choice(["F", "M"], rows), "age": rng.choice([1, 18, 25, 35, 45, 50, 56], rows),
        "occupation": rng.integers(0, 21, rows), "zip": [f"{z:05d}" for z in rng.integers(1000, 99999, rows)],
    })
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
    return path


def write_sample_rows(root: Path, seed: int = 1) -> Path:
    """Write the sample files of ``../shared/data`` (Criteo TSV and CSV, Taobao CSV, MovieLens) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    generate("criteo", CRITEO_ROWS, seed, root / "criteo_sample.tsv")
    generate("taobao", TAOBAO_ROWS, seed, root / "taobao_ad_sample.csv")
    criteo_tsv_to_csv(root / "criteo_sample.tsv", root / "criteo_sample.txt")
    write_movielens(root / "movielens_sample.txt", seed=seed)
    for extra in root.glob("*.synth.json"):  # the generator's summaries and truths: not sample rows
        extra.unlink()
    for extra in root.glob("*.truth.parquet"):
        extra.unlink()
    return root
