"""README.md and docs/ hold what the results files hold (benchmarks/docs_figures.py), and the
check fails when a figure, a generated table or an unsourced number is changed by hand."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import docs_figures  # noqa: E402


@pytest.fixture
def docs_copy(tmp_path):
    """A copy of docs/ beside the real benchmarks/results/ (the links are relative)."""
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "docs").mkdir()
    for page in (ROOT / "docs").glob("*.md"):
        (tmp_path / "docs" / page.name).write_text(page.read_text())
    return tmp_path / "docs"


def test_readme_and_docs_hold_what_the_results_hold():
    assert docs_figures.problems() == []
    assert len(docs_figures.docs()) >= 8


def test_the_copy_passes_as_the_original(docs_copy):
    assert docs_figures.problems(sorted(docs_copy.glob("*.md"))) == []


def test_a_figure_changed_by_hand_fails(docs_copy):
    page = docs_copy / "recipe.md"
    text = page.read_text()
    assert "[85.91%]" in text
    page.write_text(text.replace("[85.91%]", "[85.97%]", 1))
    found = docs_figures.problems([page])
    assert len(found) == 1 and "85.97%" in found[0] and "85.91" in found[0]


def test_a_generated_table_changed_by_hand_fails(docs_copy):
    page = docs_copy / "bring-your-own-snn.md"
    text = page.read_text()
    page.write_text(text.replace("| 1.33x |", "| 1.83x |", 1))
    found = docs_figures.problems([page])
    assert len(found) == 1 and "table peer_models" in found[0]
    assert docs_figures.write_tables([page]) == 1 and docs_figures.problems([page]) == []


def test_a_figure_without_a_source_fails_but_a_setting_does_not(docs_copy):
    page = docs_copy / "kernels.md"
    page.write_text(page.read_text() + "\nThis runs 2.5x faster at 13% firing, `tau=2.0`.\n")
    found = docs_figures.problems([page])
    assert [f.split(": ", 1)[1].split(" has")[0] for f in found] == ["'2.5x'", "'13%'"]
    page.write_text(page.read_text().replace("2.5x faster at 13% firing", "`2.5x` at `13%`"))
    assert docs_figures.problems([page]) == []


def test_json_paths_and_text_lines():
    data = {"rows": [{"k": "a;b", "v": 1.25}, {"k": "c[1]", "v": 0.5}]}
    assert docs_figures.json_value(data, "rows[k=c[1]].v") == 0.5
    assert docs_figures.json_value(data, "rows[0].v") == 1.25
    with pytest.raises(docs_figures.FigureError, match="matches 0 rows"):
        docs_figures.json_value(data, "rows[k=z].v")


def test_the_command_fails_on_a_wrong_figure(docs_copy):
    page = docs_copy / "models.md"
    page.write_text(page.read_text().replace("[12.59x]", "[13.59x]", 1))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "docs_figures.py"), "--check",
                          str(page)], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1 and "13.59x" in run.stdout
