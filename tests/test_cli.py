"""The attnlib command line and the notebook runner every committed notebook goes through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attnlib import cli, notebooks


def test_info_reports_versions_and_device(capsys):
    assert cli.run(["info"]) == 0
    out = capsys.readouterr().out
    assert "attnlib 0.1.0" in out and "torch   2.13.0" in out and "selected: " in out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.run(["no-such-command"])
    assert exc.value.code == 2


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "attnlib", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("attnlib ")


def _tiny_notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "attention-course", "display_name": "x", "language": "python"}
    nbformat.write(nb, path)


def test_notebook_runner_executes_in_a_fresh_kernel_and_writes_outputs(tmp_path, capsys):
    path = tmp_path / "tiny.ipynb"
    _tiny_notebook(path, "import attnlib\nprint(6 * 7)")
    code = cli.run(["notebooks", "run", str(path), "--budget", "120"])
    assert code == 0
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.execution_count == 1
    assert cell.outputs[0]["text"] == "42\n"
    assert "tiny.ipynb" in capsys.readouterr().out


def test_notebook_runner_flags_notebooks_over_budget(tmp_path, capsys):
    path = tmp_path / "slow.ipynb"
    _tiny_notebook(path, "import time\ntime.sleep(0.3)")
    assert cli.run(["notebooks", "time", str(path), "--budget", "0.01"]) == 1
    assert "OVER BUDGET" in capsys.readouterr().out
    assert nbformat.read(path, as_version=4).cells[0].execution_count is None  # `time` does not write


def test_notebook_runner_raises_on_a_failing_cell(tmp_path):
    from nbclient.exceptions import CellExecutionError

    path = tmp_path / "broken.ipynb"
    _tiny_notebook(path, "1 / 0")
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        notebooks.execute(path, write=False)


def test_grade_a_folder_that_does_not_exist_or_holds_no_exercise_exits_non_zero(tmp_path, capsys):
    """Nothing to grade is said, with exit status 5 (it used to print "total 0.00/0" and exit 0)."""
    missing = tmp_path / "no-such-folder"
    assert cli.run(["grade", str(missing), "--out", str(tmp_path / "r1")]) == 5
    captured = capsys.readouterr()
    assert "nothing to grade" in captured.err and "no such file or folder" in captured.err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.ipynb").write_text("{}")
    assert cli.run(["grade", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 5
    assert "no exercise notebook" in capsys.readouterr().err


def test_grade_in_a_read_only_place_writes_the_report_elsewhere_and_says_where(tmp_path, capsys, monkeypatch):
    from attnlib.grader import report

    real = report.write_folder

    def read_only(folder, files):
        if str(folder).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied")
        return real(folder, files)

    monkeypatch.setattr(report, "write_folder", read_only)
    code = cli.run(["grade", str(tmp_path / "missing"), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 5 and "Traceback" not in out
    assert "cannot write the report to" in out and "writing it to" in out
    where = out.split("writing it to ", 1)[1].split(" instead", 1)[0]
    assert (Path(where) / "results.json").is_file()
