"""``aggregator subscribers import`` on CSV files as Korean users export them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from aggregator.models import SubscriberStatus
from aggregator.store import Store
from tests.support.cli import run_cli

PEOPLE = [
    ("kim.jiwoon@example.org", "김지운", "active"),
    ("Lee.Changdong@example.org", "이창동, 감독", "pending"),  # a comma inside a name
    ("bong@example.org", "봉준호", "unsubscribed"),
    ("park@example.org", 'Park "Oldboy" Chan-wook', "active"),
    ("jeon@example.org", "", "pending"),
]
# Each header variant: the column titles, and which field (0 email, 1 name, 2 status) each holds.
HEADERS = {
    "english": (("email", "name", "status"), (0, 1, 2)),
    "capitalised": (("E-mail", "Name", "Status"), (0, 1, 2)),
    "korean": (("이메일", "이름", "상태"), (0, 1, 2)),
    "reordered": (("status", "Email Address", "full name"), (2, 0, 1)),
}

ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "cp949", "euc-kr"]
DELIMITERS = [",", ";", "\t"]


class Install:
    """A feeds.yaml and its SQLite database in a temporary directory."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = f"sqlite:///{root / 'db.sqlite'}"
        self.config = root / "feeds.yaml"
        self.config.write_text(
            "site: {title: T, url: 'https://t.example/'}\n"
            f"storage: {{url: '{self.db}'}}\n"
            "sources:\n  - {id: a, url: 'https://a.example/feed'}\n",
            encoding="utf-8",
        )

    def run(self, *args: str) -> tuple[int, str, str]:
        result = run_cli("-c", str(self.config), *args)
        assert "Traceback" not in result.output
        return result.exit_code, " ".join(result.stdout.split()), " ".join(result.stderr.split())

    def people(self) -> set[tuple[str, str, SubscriberStatus]]:
        store = Store.open(self.db)
        try:
            return {(s.email, s.name or "", s.status) for s in store.list_subscribers()}
        finally:
            store.close()


def csv_bytes(rows: list[tuple[str, ...]], delimiter: str, encoding: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode(encoding)


# Every encoding with every delimiter; the header variants take turns (each is used 3+ times).
MATRIX = [
    pytest.param(encoding, delimiter, header, id=f"{encoding}-{repr(delimiter)[1:-1]}-{header}")
    for n, (encoding, delimiter) in enumerate((e, d) for e in ENCODINGS for d in DELIMITERS)
    for header in [list(HEADERS)[n % len(HEADERS)]]
]


@pytest.mark.parametrize(("encoding", "delimiter", "header"), MATRIX)
def test_import_reads_each_encoding_delimiter_and_header(
    tmp_path: Path, encoding: str, delimiter: str, header: str
) -> None:
    names, order = HEADERS[header]
    rows = [names] + [tuple(person[i] for i in order) for person in PEOPLE]
    file = tmp_path / f"people.{encoding}.csv"
    file.write_bytes(csv_bytes(rows, delimiter, encoding))
    install = Install(tmp_path / "site")
    code, out, err = install.run("subscribers", "import", str(file), "--confirmed")
    assert code == 0, out + err
    assert "imported 5 new (2 active, 2 pending, 1 unsubscribed)" in out
    assert install.people() == {(e, n, SubscriberStatus(s)) for e, n, s in PEOPLE}


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [(e, DELIMITERS[n % len(DELIMITERS)]) for n, e in enumerate(ENCODINGS)],
)
def test_headerless_files_in_every_encoding(tmp_path: Path, encoding: str, delimiter: str) -> None:
    rows = [(email, name) for email, name, _ in PEOPLE]
    file = tmp_path / "people.csv"
    file.write_bytes(csv_bytes(rows, delimiter, encoding))
    install = Install(tmp_path / "site")
    code, _out, err = install.run("subscribers", "import", str(file))
    assert code == 0, _out + err
    assert install.people() == {(e, n, SubscriberStatus.PENDING) for e, n, _ in PEOPLE}


def test_cp949_only_syllables_and_utf16_without_bom(tmp_path: Path) -> None:
    # 똠 and 햏 exist in CP949 but not in EUC-KR (KS X 1001).
    install = Install(tmp_path / "site")
    cp949 = tmp_path / "cp949.csv"
    cp949.write_bytes("email,name\nttom@example.org,똠방각하\n".encode("cp949"))
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("email\tname\nhaeng@example.org\t햏자\n".encode("utf-16-le"))
    for file in (cp949, utf16):
        code, _out, err = install.run("subscribers", "import", str(file))
        assert code == 0, _out + err
    assert {(e, n) for e, n, _ in install.people()} == {
        ("ttom@example.org", "똠방각하"),
        ("haeng@example.org", "햏자"),
    }


def test_active_rows_stay_pending_without_confirmed_and_the_summary_says_so(
    tmp_path: Path,
) -> None:
    file = tmp_path / "people.csv"
    file.write_bytes(csv_bytes([("email", "name", "status"), *PEOPLE], ",", "utf-8"))
    install = Install(tmp_path / "site")
    code, _out, err = install.run("subscribers", "import", str(file))
    assert code == 0
    assert "2 rows marked active were imported as pending" in err
    assert "--confirmed" in err
    statuses = {e: s for e, _, s in install.people()}
    assert statuses["kim.jiwoon@example.org"] is SubscriberStatus.PENDING
    assert statuses["bong@example.org"] is SubscriberStatus.UNSUBSCRIBED
    # Importing again with --confirmed activates them (pending → active, never unsubscribed).
    code, out, err = install.run("subscribers", "import", str(file), "--confirmed")
    assert code == 0 and "5 already known" in out
    statuses = {e: s for e, _, s in install.people()}
    assert statuses["kim.jiwoon@example.org"] is SubscriberStatus.ACTIVE
    assert statuses["jeon@example.org"] is SubscriberStatus.PENDING


@pytest.mark.parametrize("count", [1, 30, 700])  # 700 crosses the store's 500-row chunks
def test_export_then_import_round_trips_statuses_and_names(tmp_path: Path, count: int) -> None:
    statuses = ["active", "pending", "unsubscribed"]
    rows = [("email", "name", "status")] + [
        (f"reader{n}@example.org", f"독자 {n}, 서울" if n % 2 else "", statuses[n % 3])
        for n in range(count)
    ]
    first = Install(tmp_path / "first")
    file = tmp_path / "in.csv"
    file.write_bytes(csv_bytes(rows, ";", "cp949"))
    assert first.run("subscribers", "import", str(file), "--confirmed")[0] == 0
    exported = tmp_path / "out.csv"
    assert first.run("subscribers", "export", "-o", str(exported))[0] == 0

    second = Install(tmp_path / "second")
    code, _out, err = second.run("subscribers", "import", str(exported), "--confirmed")
    assert code == 0, _out + err
    assert second.people() == first.people()
    assert len(second.people()) == count


@pytest.mark.parametrize("bad_line", [2, 5, 40])
def test_a_quote_never_closed_imports_nothing_and_names_the_line(
    tmp_path: Path, bad_line: int
) -> None:
    lines = ["email,name"] + [f"r{n}@example.org,Reader {n}" for n in range(2, 60)]
    lines[bad_line - 1] = f'r{bad_line}@example.org,"Reader {bad_line}'
    file = tmp_path / "broken.csv"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    install = Install(tmp_path / "site")
    code, _out, err = install.run("subscribers", "import", str(file))
    assert code == 2
    assert f"{file}:{bad_line}: malformed CSV" in err
    assert len(err.splitlines()) == 1
    assert install.people() == set()


@pytest.mark.parametrize("bad_line", [1, 3, 25])
def test_bytes_in_no_known_encoding_import_nothing_and_name_the_line(
    tmp_path: Path, bad_line: int
) -> None:
    lines = [f"r{n}@example.org,독자".encode("cp949") for n in range(1, 30)]
    lines[bad_line - 1] = f"r{bad_line}@example.org,".encode() + b"\xff\xff"
    file = tmp_path / "garbled.csv"
    file.write_bytes(b"\n".join(lines) + b"\n")
    install = Install(tmp_path / "site")
    code, _out, err = install.run("subscribers", "import", str(file))
    assert code == 2
    assert f"{file}:{bad_line}: cannot read byte 0xFF" in err
    assert install.people() == set()


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b'email,name\nq@example.org,"Kim" Ji-woon\n', "malformed CSV"),
        ("회원,가입일\n홍길동,2024-01-01\n".encode(), "no email column"),
        ("\ufeffemail,name\nk@example.org,\udcff\n".encode("utf-8", "surrogatepass"), "UTF-8"),
    ],
    ids=["text after a closing quote", "no email column", "bad utf-8 after a bom"],
)
def test_malformed_files_give_one_line_and_exit_2(
    tmp_path: Path, content: bytes, phrase: str
) -> None:
    file = tmp_path / "people.csv"
    file.write_bytes(content)
    install = Install(tmp_path / "site")
    code, _out, err = install.run("subscribers", "import", str(file))
    assert code == 2
    assert str(file) + ":" in err and phrase in err
    assert install.people() == set()


def test_the_email_column_is_chosen_by_its_title_not_its_position(tmp_path: Path) -> None:
    # "메일 주소" is a weaker title than "이메일"; "주소" (a postal address) is none.
    rows = [
        ("주소", "메일 주소", "이름", "이메일"),
        ("부산 해운대구", "old@example.org", "김지운", "kim@example.org"),
    ]
    file = tmp_path / "people.csv"
    file.write_bytes(csv_bytes(rows, ",", "cp949"))
    install = Install(tmp_path / "site")
    code, out, err = install.run("subscribers", "import", str(file))
    assert code == 0, out + err
    assert install.people() == {("kim@example.org", "김지운", SubscriberStatus.PENDING)}
