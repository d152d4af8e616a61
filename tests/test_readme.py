"""The README is a front door, and every figure in it and in docs/ is the output of the command beside it."""

import json
import re

import pytest
from conftest import ROOT

from normlab.engine.config import TrainConfig
from normlab.report.explain import explain
from normlab.report.summary import format_summary

README = (ROOT / "README.md").read_text()
FINDINGS = (ROOT / "docs" / "findings.md").read_text()  # the long tables, so that the README stays a front door


def test_the_two_setup_commands_come_first():
    lines = README.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:40])
    assert "```bash\npip install -e . && normlab study\n```" in first_screen
    assert '```bash\npip install -e ".[test,ray]" && ruff check . && pytest\n```' in first_screen
    assert lines.index("## Results") < 60


def test_the_worked_example_is_explain_output():
    assert explain("markdown") in (ROOT / "docs" / "normalizations.md").read_text()


def test_the_model_table_is_summary_output():
    assert format_summary(TrainConfig(norm="group").build_model()) in (ROOT / "docs" / "model.md").read_text()


@pytest.mark.parametrize("study, where", [("study", README), ("fashion", FINDINGS)])
def test_the_results_are_the_committed_study_reports(study, where):
    report = (ROOT / "docs" / study / "report.md").read_text()
    start = report.index("| variant |")
    table = report[start:report.index("\n\n", start)]
    assert table in where
    for line in report[report.index("## Findings"):report.index("## Graph 1")].splitlines()[1:]:
        assert line in where


GHOST = "images per BN group"


@pytest.mark.parametrize("study, axis", [("batch_mnist", GHOST), ("batch_fashion", GHOST),
                                         ("small_batch_mnist", "batch size"), ("small_batch_fashion", "batch size")])
def test_the_batch_size_tables_are_the_committed_sweeps(study, axis):
    """Ghost BN's sweeps and the real small-batch study: Graph 3's table and the table of every variant at 2."""
    report = (ROOT / "docs" / study / "report.md").read_text()
    start = report.index(f"| test error (%) at {axis}")
    table = report[start:report.index("\n\n", start)]
    assert table in FINDINGS
    small = report[report.index("## Every variant at"):]
    start = small.index("| variant |")
    assert small[start:small.index("\n\n", start)] in FINDINGS


def test_every_link_into_the_repository_exists():
    for target in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)\)", README):
        assert (ROOT / target).exists(), target
    for target in re.findall(r"\]\(([^)#:]+)\)", FINDINGS):  # docs/findings.md links relative to docs/
        assert (ROOT / "docs" / target).exists(), target


def test_the_tuned_study_is_the_committed_report():
    """Graph 4's chosen-rate table and every finding of docs/tuned_mnist are docs/findings.md's."""
    report = (ROOT / "docs" / "tuned_mnist" / "report.md").read_text()
    start = report.index("| variant | chosen lr |")
    assert report[start:report.index("\n\n", start)] in FINDINGS
    for line in report[report.index("## Findings"):report.index("## Graph 1")].splitlines()[1:]:
        assert line in FINDINGS


def test_how_it_is_built_has_a_line_for_each_module_and_no_other():
    text = README.split("## How it is built")[1].split("```")[1]
    named, package = set(), ""
    for line in text.splitlines():
        if entry := re.match(r"^  ([a-z_]+)/ ", line):
            package = entry[1] + "/"
        elif entry := re.match(r"^  ([a-z_]+\.py) ", line):
            named.add(entry[1])
        elif entry := re.match(r"^    ([a-z_]+\.py) ", line):
            named.add(package + entry[1])
    source = ROOT / "src" / "normlab"
    modules = {p.relative_to(source).as_posix() for p in source.rglob("*.py")}
    assert named == {m for m in modules if not m.endswith(("__init__.py", "__main__.py"))}


def test_each_module_reads_in_one_sitting():
    """What "How it is built" promises a newcomer: no module over 350 lines, no function over 60."""
    import ast

    for path in (ROOT / "src" / "normlab").rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 350, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name}"


REMEDIES = {name: (ROOT / "docs" / f"remedies_{name}" / "report.md").read_text() for name in ("mnist", "fashion")}
REPORTS = [path.read_text() for path in sorted((ROOT / "docs").glob("*/report.md"))]


@pytest.mark.parametrize("dataset", sorted(REMEDIES))
def test_the_remedies_table_is_the_committed_report(dataset):
    """The table of every variant at 2 images per group is the report's, as the report prints it: a row a variant,
    two more (PreciseBN, the test batch's statistics) for each of the 5 with batch statistics."""
    report = REMEDIES[dataset]
    start = report.index("| variant | test error (%) |")
    table = report[start:report.index("\n\n", start)]
    variants = json.loads((ROOT / "docs" / f"remedies_{dataset}" / "study.json").read_text())["variants"]
    assert len(table.splitlines()) == 2 + len(variants) + 2 * 5 and table in FINDINGS


def test_every_interval_quoted_is_one_a_committed_report_prints():
    """Every difference with its interval that the README's findings or docs/findings.md quote (the papers' table,
    the sentences that sum up) is printed by a committed report: none is typed in."""
    section = README[README.index("## Results"):README.index("## How each normalization")]
    quoted = re.findall(r"[+-]\d\.\d\d \([+-]\d\.\d\d to [+-]\d\.\d\d\)(?: \[[+-]\d\.\d\d to [+-]\d\.\d\d\])?",
                        section + FINDINGS)
    assert len(quoted) > 40
    assert [q for q in quoted if not any(q in report for report in REPORTS)] == []
