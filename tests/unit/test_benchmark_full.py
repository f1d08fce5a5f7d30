"""`run --full`'s goals table: built from the newest dated result of every part, never a quick run's."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.full import GOALS_END, GOALS_START, goal_rows, goals_markdown, newest


def _write(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_the_newest_dated_result_of_each_part_gives_the_goals(tmp_path: Path) -> None:
    goal = {"goal": "RSS grows <= 10 MiB", "figure": "+1.0 MiB", "met": True, "why": "x"}
    _write(tmp_path / "cost-2026-01-01.json", {"goals": [goal | {"figure": "+9.9 MiB", "met": False}]})
    _write(tmp_path / "cost-2026-02-01.json", {"goals": [goal]})
    _write(tmp_path / "cost-quick.json", {"goals": [goal | {"figure": "quick"}]})
    _write(tmp_path / "cost-scale-2026-03-01.json", {"goals": [goal | {"figure": "another command"}]})
    _write(tmp_path / "2026-02-01" / "results.json", {"targets": [
        {"description": "idle RSS <= Prefect's", "value": 57.25, "bound": 58.0, "met": True}]})
    assert newest(tmp_path, "cost") == tmp_path / "cost-2026-02-01.json"
    assert goal_rows(tmp_path) == [
        ("2026-02-01/results.md", "idle RSS <= Prefect's", "57.2 (bound 58)", True),
        ("cost-2026-02-01.md", "RSS grows <= 10 MiB", "+1.0 MiB", True),
    ]


def test_the_table_marks_misses_and_unjudged_goals(tmp_path: Path) -> None:
    goals = [{"goal": "slope | zero", "figure": "+7 | 9", "met": False, "why": ""},
             {"goal": "g", "figure": "f", "met": None, "why": ""}]
    _write(tmp_path / "soak-2026-02-01.json", {"goals": goals})
    table = goals_markdown(tmp_path, "results/")
    row = "| slope / zero | +7 / 9 | **MISSED** | [soak-2026-02-01.md](results/soak-2026-02-01.md) |"
    assert row in table
    assert "| g | f | not judged |" in table
    assert GOALS_START.startswith("<!--") and GOALS_END.startswith("<!--")
