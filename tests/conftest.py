"""The summary of skipped tests: one line per reason, with its count.

pytest's ``-rs`` prints a line per skipping test location; a clone without ``../shared/vectors`` beside
it skips every test that reads outside evidence, and its reader should see one line that says how many
and which folder they need (tests/shared_vectors.py), not a hundred.
"""

from __future__ import annotations

from collections import Counter

from _pytest.terminal import TerminalReporter


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1
    for reason, count in sorted(reasons.items()):
        noun = "test" if count == 1 else "tests"
        terminalreporter.write_line(f"SKIPPED {count} {noun}: {reason}", yellow=True)
