"""The README's worked example and model table are the output of the commands written next to them."""

from pathlib import Path

from normlab.explain import explain
from normlab.model import Net
from normlab.summary import format_summary

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_worked_example_is_explain_output():
    assert explain("markdown") in README


def test_readme_model_table_is_summary_output():
    assert format_summary(Net("group")) in README


def test_readme_has_two_setup_commands():
    assert "pip install -e . && normlab study\n" in README
    assert 'pip install -e ".[test]" && ruff check . && pytest\n' in README


def test_readme_results_are_the_committed_study_report():
    report = (Path(__file__).resolve().parent.parent / "docs" / "study" / "report.md").read_text()
    table = report[report.index("| variant |"):report.index("## Findings")].strip()
    assert table in README
    for line in report[report.index("## Findings"):report.index("## Graph 1")].splitlines()[1:]:
        assert line in README
