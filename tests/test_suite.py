"""The test command itself: a front end that is not there is skipped and
named in the summary, or fails the run when tests/run.sh installed the
front ends (FASTFCGI_REQUIRE_FRONTENDS=1); ``-m "not frontend"`` leaves
out every test that needs one.  Each case runs pytest in a subprocess on a
small test file that uses conftest.need_frontend as the suite does."""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))

SAMPLE = '''
import pytest
from conftest import need_frontend

@pytest.mark.frontend
def test_with_a_missing_front_end():
    need_frontend("nosuchserver", "nosuchserver is not installed")

@pytest.mark.frontend
def test_with_a_present_front_end():
    need_frontend("presentserver")

@pytest.mark.frontend
def test_with_a_front_end_this_machine_cannot_run():
    need_frontend("cannotrun", "needs a user namespace", installable=False)

def test_without_a_front_end():
    pass
'''


def run_sample(tmp_path, *args, require=None):
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    env = dict(os.environ, PYTHONPATH=TESTS)
    env.pop("FASTFCGI_REQUIRE_FRONTENDS", None)
    if require:
        env["FASTFCGI_REQUIRE_FRONTENDS"] = "1"
    # The suite's conftest loaded as a plugin, and its pytest.ini.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest", "-rfs",
         "-c", os.path.join(os.path.dirname(TESTS), "pytest.ini"), "--rootdir", str(tmp_path),
         str(sample)] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
        timeout=120)
    return proc.returncode, proc.stdout.decode()


def test_a_missing_front_end_is_skipped_and_named_in_the_summary(tmp_path):
    code, out = run_sample(tmp_path)
    assert code == 0, out
    summary = out[out.index("front ends"):]
    assert "ran      presentserver" in summary
    assert "skipped  nosuchserver" in summary and "nosuchserver is not installed" in summary
    assert "skipped  cannotrun" in summary
    assert "2 passed, 2 skipped" in out


def test_a_missing_front_end_fails_when_the_test_command_installed_them(tmp_path):
    code, out = run_sample(tmp_path, require=True)
    assert code == 1, out
    assert "FASTFCGI_REQUIRE_FRONTENDS=1" in out and "nosuchserver" in out
    # What no package install can bring stays a skip.
    assert "1 failed, 2 passed, 1 skipped" in out


def test_not_frontend_runs_without_any_front_end(tmp_path):
    code, out = run_sample(tmp_path, "-m", "not frontend", require=True)
    assert code == 0, out
    assert "1 passed, 3 deselected" in out
    assert "front ends" not in out
