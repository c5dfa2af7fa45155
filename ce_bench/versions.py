"""The versions of the stack a result depends on, recorded in every edited_hf results file.

Two runs of the same edit on different transformers or torch releases can differ (a renamed
argument once silently moved where steering applied), so the leaderboard warns when it puts such
runs side by side.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# What a results file records -> the distribution it comes from.
STACK = {
    "torch": "torch",
    "transformers": "transformers",
    "lm_eval": "lm_eval",
    "sae_lens": "sae-lens",
    "ce_bench": "ce-bench",
}


def stack_versions() -> dict[str, str]:
    """{"torch": "2.13.0+cpu", "transformers": "5.24.0", ...} of this process's installs."""
    found = {}
    for name, distribution in STACK.items():
        try:
            found[name] = version(distribution)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def mixed_versions(recorded: list[tuple[str, dict[str, str]]]) -> list[str]:
    """One line per package that differs between runs ((run name, its recorded versions) per
    run; names may repeat, e.g. several "unedited" runs), e.g. "transformers: 5.23.0 (2 runs:
    a, b), 5.24.0 (1 run: c)"; empty when all agree."""
    lines = []
    for name in STACK:
        runs_by_version: dict[str, list[str]] = {}
        for run, versions in recorded:
            if name in versions:
                runs_by_version.setdefault(versions[name], []).append(run)
        if len(runs_by_version) > 1:
            parts = [
                f"{v} ({len(rs)} run{'s' if len(rs) > 1 else ''}: {_names(rs)})"
                for v, rs in sorted(runs_by_version.items())
            ]
            lines.append(f"{name}: " + ", ".join(parts))
    return lines


def _names(runs: list[str], most: int = 3) -> str:
    return ", ".join(runs[:most]) + (f", ... ({len(runs) - most} more)" if len(runs) > most else "")
