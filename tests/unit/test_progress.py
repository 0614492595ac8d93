import io

from enclave_infer.client.progress import Progress


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
