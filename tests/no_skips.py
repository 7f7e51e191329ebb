"""pytest hooks shared by the Python test folders: a skipped test fails the run, since ctest
must never count a test that did not run as passing. A conftest.py takes them with
``from no_skips import *`` (tests/ on sys.path)."""

import pytest

__all__ = ["pytest_runtest_logreport", "pytest_sessionfinish", "pytest_terminal_summary"]

_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            "FAILED: skipped tests count as failures here: " + ", ".join(_skipped), red=True
        )
