"""``llmfleet models``: argument checks and the table it prints (the runbook itself runs on the lab)."""

from __future__ import annotations

from llmfleet import cli, models


def test_add_and_remove_need_a_name_and_add_a_backend_url(capsys):
    assert cli.main(["models", "add", "--backend-url", "http://h:1/v1"]) == 2
    assert "--name is required" in capsys.readouterr().err
    assert cli.main(["models", "add", "--name", "extra"]) == 2
    assert "--backend-url is required" in capsys.readouterr().err
    assert cli.main(["models", "remove"]) == 2


def test_table_marks_rows_added_from_the_cli(capsys):
    rows = [
        {
            "name": "smol",
            "display_name": "smol",
            "backend_url": "http://a:8000/v1",
            "input_cost": 0.5,
            "output_cost": 1.5,
            "state": "healthy",
            "health": "healthy",
            "source": "catalog",
        },
        {
            "name": "extra",
            "display_name": "Extra",
            "backend_url": "http://b:1/v1",
            "input_cost": 2.0,
            "output_cost": 4.0,
            "state": "unknown",
            "health": "unreachable",
            "source": "cli",
        },
    ]
    models.print_table(rows)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DISPLAY"]
    assert "http://b:1/v1" in lines[3] and "unreachable" in lines[3] and lines[3].rstrip().endswith("cli")
    assert models.CLI_NOTE in out
    models.print_table(rows[:1])
    assert models.CLI_NOTE not in capsys.readouterr().out
