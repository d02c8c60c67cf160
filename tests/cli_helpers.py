"""Helpers of the CLI tests: run ``spikegpt`` in-process and check its one-line errors."""

from spikegpt.tools.cli import main


def run(capsys, *argv):
    capsys.readouterr()  # drop what earlier steps printed
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    """Exit status 1 and one error line at the end of stderr (progress bars of loading may come before it)."""
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("spikegpt: error: ") and "Traceback" not in err, err
    assert sum("error" in line.lower() for line in lines) == 1, err
    for n in needles:
        assert n in lines[-1], lines[-1]
