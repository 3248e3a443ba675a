"""Progress in a log file is plain lines, never carriage-return bar updates."""

import io

from simulations.engine.progress import LineProgress, progress_bar


def test_a_log_gets_periodic_plain_lines_with_an_eta():
    stream = io.StringIO()
    for _ in LineProgress(range(4), desc="training", unit="steps", interval=0.0, stream=stream):
        pass
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("training: 1/4 steps (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("training: 4/4 steps (100%)") and "ETA" not in lines[-1]
    assert len(lines) == 4  # the closing line is not written twice


def test_a_loop_shorter_than_the_interval_writes_nothing():
    stream = io.StringIO()
    bar = LineProgress(total=10, initial=3, desc="grid", unit="points", stream=stream)
    bar.update(7)
    bar.close()
    assert stream.getvalue() == ""


def test_stderr_that_is_not_a_terminal_gets_lines(capsys):
    # pytest's captured stderr is not a terminal
    assert isinstance(progress_bar(range(3), desc="x"), LineProgress)
    assert list(progress_bar(range(3), enabled=False)) == [0, 1, 2]
