"""Limits of a user's concept-depth CSV: a big upload is refused early and cheaply (bytes before
decoding, rows as they are read), the app's upload limit matches the parser's, and a valid CSV
parses exactly as a plain ``csv.DictReader`` over the whole text reads it."""

from __future__ import annotations

import csv
import io
import tomllib
import tracemalloc

import pytest

from workbench import concept_datasets
from workbench.concept_datasets import CSV_MAX_BYTES, CSV_MAX_CHARS, CSV_MAX_MB, CSV_MAX_ROWS, CSV_MIN_ROWS, parse_csv
from workbench.config import PROJECT_ROOT
from workbench.errors import BadRequest

MEMORY_BOUND = 50 * 2**20  # bytes of Python allocations a refused upload may cost


def _peak(call) -> tuple[int, Exception | None]:
    """Peak traced allocation (bytes) while ``call`` runs, and what it raised."""
    tracemalloc.start()
    try:
        call()
        error = None
    except Exception as exc:  # noqa: BLE001  (returned for the caller to check)
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def _rows(n: int, text: str = "t") -> bytes:
    return ("text,label\n" + "".join(f"{text}{i},{'ab'[i % 2]}\n" for i in range(n))).encode()


def test_limits_follow_from_each_other():
    assert CSV_MAX_BYTES == (CSV_MAX_ROWS + 1) * (4 * CSV_MAX_CHARS + 400) == 4_002_000
    # the largest legal file fits: every row a quoted text of CSV_MAX_CHARS 4-byte characters
    biggest = _rows(0) + ("".join(f'"{"😀" * CSV_MAX_CHARS}",{"ab"[i % 2]}\n' for i in range(CSV_MAX_ROWS))).encode()
    assert len(biggest) <= CSV_MAX_BYTES
    data = parse_csv(biggest)
    assert len(data.texts) == CSV_MAX_ROWS and {len(t) for t in data.texts} == {CSV_MAX_CHARS}
    assert CSV_MAX_MB == 4 and (CSV_MAX_MB - 1) * 2**20 < CSV_MAX_BYTES <= CSV_MAX_MB * 2**20


def test_a_20_mb_csv_is_refused_before_decoding_at_little_memory():
    data = _rows(1_000_000, text="a fairly ordinary sentence number ")  # about 40 MB: well over the limit
    data = data[:20 * 2**20]
    assert len(data) == 20 * 2**20
    peak, error = _peak(lambda: parse_csv(data, "big"))
    assert isinstance(error, BadRequest)
    assert str(error) == ("The CSV is 20.0 MB; at most 3.8 MB (2000 rows of up to 400 characters) is accepted. "
                          "Sample it down.")
    assert peak < MEMORY_BOUND, peak
    text = data.decode()  # the same refusal for text (the CLI's path): no bigger in characters than in bytes
    peak, error = _peak(lambda: parse_csv(text, "big"))
    assert isinstance(error, BadRequest) and "20.0 MB" in str(error) and peak < MEMORY_BOUND


def test_too_many_rows_stop_the_reading_at_the_first_row_over():
    data = _rows(400_000)  # 3.8 MB of short rows: under the byte limit, 200x the row limit
    assert len(data) <= CSV_MAX_BYTES
    peak, error = _peak(lambda: parse_csv(data))
    assert isinstance(error, BadRequest)
    assert str(error) == "The CSV has more than 2000 rows; at most 2000 are accepted. Sample it down."
    assert peak < 5 * 2**20, peak  # about the 2000 rows read, not the 400,000 in the file


def test_a_long_text_stops_the_reading_at_its_row():
    rows = [f"t{i},{'ab'[i % 2]}" for i in range(30)] + ["x" * (CSV_MAX_CHARS + 1) + ",a"] + ["bad"] * 5000
    with pytest.raises(BadRequest, match=r"^Row 32 has a text of 401 characters; the limit is 400\.$"):
        parse_csv(("text,label\n" + "\n".join(rows)).encode())


def test_exactly_the_row_limit_is_accepted():
    data = parse_csv(_rows(CSV_MAX_ROWS))
    assert len(data.texts) == CSV_MAX_ROWS and data.texts[-1] == f"t{CSV_MAX_ROWS - 1}"
    with pytest.raises(BadRequest, match="more than 2000 rows"):
        parse_csv(_rows(CSV_MAX_ROWS + 1))


def _reference(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Texts and raw labels as the whole-file reader read them (the parser before streaming)."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {f.strip().lower(): f for f in reader.fieldnames}
    rows = list(reader)
    return (tuple(r[columns["text"]].strip() for r in rows), tuple(r[columns["label"]].strip() for r in rows))


VALID = {
    "plain": "text,label\n" + "\n".join(f"sentence {i},{'yes' if i % 3 else 'no'}" for i in range(30)),
    "quoted": 'text,label\n' + "\n".join(f'"a, ""quoted"" text\nover two lines {i}",{"ab"[i % 2]}' for i in range(24)),
    "crlf_bom_extra_columns": "\ufeffid, Text ,LABEL,source\r\n" + "\r\n".join(
        f"{i}, padded text {i} ,{'pos' if i % 2 else 'neg'},web" for i in range(40)) + "\r\n",
    "unicode": "text,label\n" + "\n".join(f"Größe {i} – 東京 😀,{'ab'[i % 2]}" for i in range(20)),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_valid_csv_parses_as_the_whole_file_reader_reads_it(name):
    text = VALID[name]
    texts, raw = _reference(text.removeprefix("\ufeff"))
    classes = sorted(set(raw))
    for data in (text.encode("utf-8"), text.removeprefix("\ufeff")):
        parsed = parse_csv(data, name)
        assert parsed.texts == texts and len(texts) >= CSV_MIN_ROWS
        assert parsed.class_names == tuple(classes)
        assert parsed.labels == tuple(classes.index(v) for v in raw)


def test_bad_utf8_after_the_first_rows_is_still_refused():
    data = _rows(30)[:-5] + b"\xff\xfe,b\n"
    with pytest.raises(BadRequest, match="not UTF-8"):
        parse_csv(data)


def test_the_upload_limit_in_the_app_is_the_parsers():
    config = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == CSV_MAX_MB
    page = (PROJECT_ROOT / "app_pages" / "concept_depth.py").read_text()
    assert "max_upload_size=concept_datasets.CSV_MAX_MB" in page


def test_the_page_states_the_limits(app):
    at = app.switch_page("app_pages/concept_depth.py").run()
    info = " ".join(i.value for i in at.info)
    assert f"{CSV_MIN_ROWS} to {CSV_MAX_ROWS} rows" in info and f"up to {CSV_MAX_CHARS} characters" in info
    assert "at most 3.8 MB" in info
    assert concept_datasets.CSV_MAX_MB == at.get("file_uploader")[0].proto.max_upload_size_mb
