"""The studies interface (core/paper/studies.py): option checks, the CLI's dispatch and what
``write_study`` writes, with a stand-in study module (the real studies have their own tests)."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest

from core.__main__ import main
from core.paper import studies
from core.paper.studies import StudyOptions, StudyResult


def _fake_run(options: StudyOptions, *, log) -> StudyResult:
    """A study whose numbers come from its options, so that the test can check them."""
    log(f"fake study on {options.dataset}")
    table = pd.DataFrame({"seed": list(options.seeds), "value": [s * 0.5 for s in options.seeds]})
    verdicts = pd.DataFrame(
        [
            {
                "claim": "values grow with the seed",
                "criterion": "monotone",
                "verdict": "holds",
                "detail": f"{len(table)} seeds",
            }
        ]  # fmt: skip
    )
    return StudyResult(
        title="Fake study",
        verdicts=verdicts,
        tables={"results": table, "Second table (per seed)": table.assign(twice=table.value * 2)},
        settings={"preset": options.preset, "quick": options.quick},
        notes=["a note"],
    )


@pytest.fixture
def fake_study(monkeypatch):
    module = types.ModuleType("tests_fake_study")
    module.run = _fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_fake_study", module)
    monkeypatch.setitem(studies.STUDIES, "fake", ("tests_fake_study", "a stand-in question"))
    return "fake"


def test_cli_runs_a_study_and_writes_its_files(fake_study, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reproduce", "--experiment", "fake", "--dataset", "digits", "--seeds", "2,4"]
    code = main([*argv, "--preset", "digits-conv", "--quick", "--out", str(out)])
    assert code == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == "fake" and settings["question"] == "a stand-in question"
    assert settings["options"]["seeds"] == [2, 4] and settings["preset"] == "digits-conv"
    assert settings["command"].startswith("python -m core reproduce --experiment fake")
    results = pd.read_csv(out / "results.csv")
    assert results["value"].tolist() == [1.0, 2.0]
    second = pd.read_csv(out / "second_table_per_seed.csv")
    assert second["twice"].tolist() == [2.0, 4.0]
    assert pd.read_csv(out / "verdicts.csv")["verdict"].tolist() == ["holds"]
    html = (out / "report.html").read_text()
    assert "Fake study" in html and "a stand-in question" in html and "a note" in html
    assert "holds: values grow with the seed (monotone) — 2 seeds" in capsys.readouterr().out


def test_study_options_are_checked():
    with pytest.raises(ValueError, match="unknown study 'nope'; choose from conv"):
        StudyOptions(name="nope", dataset="digits")
    with pytest.raises(ValueError, match="epochs must be a finite number > 0"):
        StudyOptions(name="conv", dataset="digits", epochs=float("nan"))
    with pytest.raises(ValueError, match="seeds must be distinct"):
        StudyOptions(name="conv", dataset="digits", seeds=(1, 1))


def test_a_study_result_needs_verdict_columns_and_a_table():
    with pytest.raises(ValueError, match="lack the column"):
        StudyResult(title="t", verdicts=pd.DataFrame({"claim": []}), tables={"r": pd.DataFrame()})
    verdicts = pd.DataFrame(columns=list(studies.VERDICT_COLUMNS))
    with pytest.raises(ValueError, match="at least one table"):
        StudyResult(title="t", verdicts=verdicts, tables={})


def test_the_paper_experiments_refuse_study_options(tmp_path, capsys):
    argv = ["reproduce", "--experiment", "quality", "--dataset", "curves", "--quick"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--preset and --quick apply to the studies" in capsys.readouterr().err
