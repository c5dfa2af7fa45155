"""The stack versions a run records, and the warning for a board that mixes them."""

from __future__ import annotations

from ce_bench.versions import STACK, mixed_versions, stack_versions


def test_this_process_reports_every_package_of_the_stack() -> None:
    assert set(stack_versions()) == set(STACK)


def test_runs_sharing_a_name_are_still_counted_apart() -> None:
    recorded = [("unedited", {"transformers": "5.24.0"}), ("unedited", {"transformers": "5.23.0"})]
    assert mixed_versions(recorded) == [
        "transformers: 5.23.0 (1 run: unedited), 5.24.0 (1 run: unedited)"
    ]
    assert mixed_versions(recorded[:1] * 2) == []
