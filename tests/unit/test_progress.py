import io

import pytest

from enclave_infer.client._progress import Progress
from enclave_infer.client._text import clock, count, duration


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only() -> None:
    tty = Tty()
    p = Progress(10_000_000, label="upload", stream=tty)
    for _ in range(10):
        p.advance(1_000_000)
    p.close()
    out = tty.getvalue()
    assert "\r" in out and out.endswith("\n")
    assert "10.0/10.0 MB" in out and "MB/s" in out and "ETA" in out
    quiet = io.StringIO()  # not a terminal
    p = Progress(10, label="upload", stream=quiet)
    p.advance(10)
    p.close()
    assert quiet.getvalue() == ""
    forced_off = Tty()
    p = Progress(10, label="upload", stream=forced_off, enabled=False)
    p.advance(10)
    p.close()
    assert forced_off.getvalue() == ""


def test_a_slow_upload_shows_the_time_left_as_a_clock() -> None:
    tty = Tty()
    p = Progress(10_000_000, label="upload", stream=tty)
    p._started -= 100.0  # 1 MB in 100 s: 900 s left
    p.advance(1_000_000)
    assert "ETA   15:00" in tty.getvalue()


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.25, "250 ms"),
        (1, "1 second"),
        (30, "30 seconds"),
        (300, "5 minutes"),
        (90, "1 minute 30 seconds"),
        (3600, "1 hour"),
        (7380, "2 hours 3 minutes"),
    ],
)
def test_durations_are_in_human_units(seconds: float, words: str) -> None:
    assert duration(seconds) == words


def test_counts_agree_with_their_noun() -> None:
    assert count(1, "request") == "1 request"
    assert count(2, "request") == "2 requests"
    assert count(0, "label") == "0 labels"
    assert count(1, "entry", "entries") == "1 entry" and count(3, "entry", "entries") == "3 entries"
    assert clock(7) == "0:07" and clock(725) == "12:05" and clock(3723) == "1:02:03"
