"""Every number in the README's results table comes from the committed file named beside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
SOURCE = re.compile(r"`(benchmarks/results/[^`]+)`")


def results_rows() -> list[list[str]]:
    """The cells of each body row of the first table under '## Results'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def appears(number: str, text: str) -> bool:
    """`number` as the README shows it is one of the file's numbers, rounded to the shown decimals."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    return any(f"{float(found):.{decimals}f}" == number for found in NUMBER.findall(text))


def test_the_results_table_names_a_committed_file_on_every_row():
    rows = results_rows()
    assert len(rows) >= 4
    for row in rows:
        sources = SOURCE.findall(row[-1])
        assert sources, f"row {row[0]!r} names no file under benchmarks/results/"
        for source in sources:
            assert (ROOT / source).is_file(), f"row {row[0]!r}: {source} is not in the repository"


def test_every_number_in_the_results_table_is_in_the_file_it_names():
    for row in results_rows():
        text = "".join((ROOT / source).read_text() for source in SOURCE.findall(row[-1]))
        numbers = [n for cell in row[1:-1] for n in NUMBER.findall(cell)]
        assert numbers, f"row {row[0]!r} shows no number"
        missing = [n for n in numbers if not appears(n, text)]
        assert not missing, f"row {row[0]!r}: {missing} not found in {row[-1]}"


def test_the_check_itself_can_fail():
    assert appears("0.9083", '{"mean": 0.90831}') and appears("4.30", "4.30x")
    assert not appears("0.9084", '{"mean": 0.90831}') and not appears("12", "1.2")


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
