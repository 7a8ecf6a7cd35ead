"""The ``conv`` study (core/paper/study_conv.py): its quick run through the CLI, with facts the
numbers must obey, and its verdict rules on made-up records."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.__main__ import main
from core.engine.shared_batch import product_route
from core.paper.study_conv import conv_presets, verdicts


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    argv = ["reproduce", "--experiment", "conv", "--dataset", "digits", "--preset", "digits-conv"]
    assert main([*argv, "--quick", "--seeds", "1", "--no-progress", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_the_table_and_the_verdicts(quick):
    settings = json.loads((quick / "settings.json").read_text())
    assert settings["presets"] == ["digits-conv"] and settings["fisher"] == "true"
    table = pd.read_csv(quick / "results.csv")
    assert set(table["layer"]) == {
        "encoder.conv1",
        "encoder.conv2",
        "decoder.conv1",
        "decoder.conv2",
    }
    conv2 = table[table["layer"] == "encoder.conv2"].iloc[0]
    assert (conv2["C_in"], conv2["C_out"], conv2["kernel"], conv2["T"]) == (8, 16, "3×3", 4)
    verdict = pd.read_csv(quick / "verdicts.csv")
    assert len(verdict) == 4 and set(verdict["verdict"]) <= {"holds", "does not hold", "mixed"}
    assert "Approximation quality on conv layers" in (quick / "report.html").read_text()


def test_the_measures_obey_the_maths(quick):
    records = pd.read_csv(quick / "records_every_checkpoint_layer_method_seed.csv")
    assert records["ng_cosine"].between(-1 - 1e-9, 1 + 1e-9).all()
    assert (records["relative_error"] >= 0).all()
    wide = records.pivot_table(
        index=["seed", "step", "layer"], columns="method", values="relative_error"
    )
    # rank-1 KPSVD is the best symmetric Kronecker product: never worse than either KFAC
    assert (wide["kpsvd"] <= wide["kfac"] + 1e-9).all()
    assert (wide["kpsvd"] <= wide["kfac_reduce"] + 1e-9).all()
    # decoder.conv2 has one output channel (dg = 1): F = A' ⊗ [1] exactly, so KPSVD is exact
    # while KFAC-expand's A (a sum over positions, not over pairs of them) is not
    last = wide.xs("decoder.conv2", level="layer")
    assert (last["kpsvd"] < 1e-6).all() and (last["kfac"] > 1e-3).all()
    for row in records.drop_duplicates("layer").itertuples():
        da = row.C_in * 9 + 1
        assert row.route == product_route(row.T, da, row.C_out)


def _records(errors: dict[str, float], cosines: dict[str, float], layer: str) -> list[dict]:
    return [
        {"preset": "p", "seed": 1, "step": 0, "layer": layer, "method": m,
         "relative_error": e, "ng_cosine": cosines[m]}
        for m, e in errors.items()
    ]  # fmt: skip


def test_verdict_rules():
    methods = ["kfac", "kfac_reduce", "kpsvd", "deflation", "lanczos", "kfac_corrected"]
    good = dict(zip(methods, [0.5, 0.6, 0.3, 0.2, 0.2, 0.25], strict=True))
    bad = dict(zip(methods, [0.5, 0.4, 0.45, 0.6, 0.2, 0.25], strict=True))
    aligned = {m: 1 - e for m, e in good.items()}  # lower error, higher cosine
    table = verdicts(pd.DataFrame(_records(good, aligned, "a") + _records(bad, aligned, "b")))
    rows = table.set_index("claim")["verdict"]
    assert rows["the KPSVD family fits conv blocks better than KFAC-expand"] == "mixed"
    assert rows["the KPSVD family fits conv blocks better than KFAC-reduce"] == "mixed"
    assert rows["KFAC-expand fits better than KFAC-reduce"] == "mixed"
    direction = "a better Frobenius fit gives a better natural-gradient direction on conv layers"
    assert rows[direction] == "holds"  # layer a: ρ = −1, layer b: ρ = −0.12 (mean −0.56)
    table = verdicts(pd.DataFrame(_records(good, aligned, "a")))
    assert set(table["verdict"]) == {"holds"}
    opposed = dict(good)  # the worse the fit, the better the direction
    table = verdicts(pd.DataFrame(_records(good, opposed, "a")))
    assert table.set_index("claim").loc[direction, "verdict"] == "does not hold"
    loose = dict(zip(methods, [0.4, 0.5, 0.9, 0.6, 0.7, 0.8], strict=True))
    detail = verdicts(pd.DataFrame(_records(good, loose, "a"))).iloc[3]
    assert detail["verdict"] == "mixed" and "ρ(error, cosine) = -0.41" in detail["detail"]


def test_presets_and_bad_options(tmp_path, capsys):
    assert conv_presets("digits", labelled=True) == ["digits-conv", "digits-cnn"]
    assert conv_presets("digits", labelled=False) == ["digits-conv"]
    argv = ["reproduce", "--experiment", "conv", "--dataset", "digits", "--preset", "digits"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--quick", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "not a convolutional preset for digits" in capsys.readouterr().err
