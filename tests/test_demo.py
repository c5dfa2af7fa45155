"""`make demo`'s console contract: its steps and tables fit 80 columns, the libraries' messages
go to the log file, and the last line is the leaderboard's address."""

from __future__ import annotations

from ce_bench.demo import main

TINY = [
    "--emotions", "anger", "--methods", "steering", "--locate-limit", "1",
    "--validation-limit", "1", "--test-limit", "2", "--max-gen-toks", "4",
    "--erasure-limit", "2", "--erasure-classes", "negative", "--side-limit", "6",
    "--lifelong-edits", "2", "--editors", "grace",
]  # fmt: skip


def test_the_demo_at_tiny_limits_prints_only_its_steps_tables_and_the_board(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    main([*TINY, "--out", str(tmp_path)])
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert [line for line in lines if "WARNING" in line or "bootstrapping" in line] == []
    assert "…" not in printed.out and max(map(len, lines[:-1])) <= 80  # the last: a file:// URL
    assert [line for line in lines if line.startswith("─")][:6] == [
        line for line in lines if "/6 " in line
    ]  # six numbered steps
    board = tmp_path / "board" / "board.html"
    assert lines[-1] == f"Leaderboard: {board.resolve().as_uri()}"
    assert board.is_file()
    # the gate: GRACE leaves general ability alone; neuron masking breaks perplexity
    assert "grace, 2 edits: passed" in printed.out
    assert "neuron masking (SST-2 negative): FAILED: word_perplexity" in printed.out
    # a gate table split to fit 80 columns names the metric in each part, beside its verdict
    assert any("word_perplexity" in line and "FAIL" in line for line in lines)
    log = (tmp_path / "ce-bench.log").read_text()
    assert "Running generate_until requests" in log and "bootstrapping for stddev" in log
