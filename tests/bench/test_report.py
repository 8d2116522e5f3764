"""docs/benchmarks.md sections: a rerun replaces only its own section."""

from __future__ import annotations

from pathlib import Path

from report import INTRO, percentile, replace_section, table, write_section


def test_empty_document_gets_the_intro_and_the_section() -> None:
    text = replace_section("", "IMAP path (issue 3)", "numbers")
    assert text.startswith(INTRO)
    assert text.endswith("## IMAP path (issue 3)\n\nnumbers\n")


def test_rerun_replaces_only_its_section_and_keeps_the_others() -> None:
    doc = "# Benchmarks\n\nintro\n\n## LMTP\n\nlmtp numbers\n\n## IMAP path (issue 3)\n\nold\n\n### sub\n\nold sub\n\n## Cassandra\n\nc*\n"
    text = replace_section(doc, "IMAP path (issue 3)", "new")
    assert "old" not in text
    assert text == "# Benchmarks\n\nintro\n\n## LMTP\n\nlmtp numbers\n\n## IMAP path (issue 3)\n\nnew\n\n## Cassandra\n\nc*\n"
    assert replace_section(text, "IMAP path (issue 3)", "new") == text


def test_missing_section_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    path.parent.mkdir()
    path.write_text("# Benchmarks\n\n## LMTP\n\nx\n")
    write_section(path, "IMAP path (issue 3)", "y")
    assert path.read_text() == "# Benchmarks\n\n## LMTP\n\nx\n\n## IMAP path (issue 3)\n\ny\n"


def test_a_heading_that_only_starts_alike_is_not_replaced() -> None:
    doc = "# B\n\n## IMAP path (issue 3) extras\n\nkeep\n"
    text = replace_section(doc, "IMAP path (issue 3)", "z")
    assert "keep" in text and text.endswith("## IMAP path (issue 3)\n\nz\n")


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_table_markdown() -> None:
    assert table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
