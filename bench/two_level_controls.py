"""Controls for the two-level KFAC study (issue 19): does the Nicolaides variant's gain over KFAC
come from the curvature between layers, or from the KL-clip budget?

    .venv/bin/python bench/two_level_controls.py --lr 0.03 --out /tmp/two_level_klclip_off \\
        [--seeds 1,2,3] [--epochs 20] [--kl-clip none|0.01] [--damping 0.1]

Runs :func:`core.paper.study_two_level.run` on curves-small for KFAC, the Nicolaides variant
(``kfac_two_level_nicolaides``) and the control without cross-layer terms
(``kfac_two_level_nicolaides_layerwise``: the coarse matrix ``R₀FR₀ᵀ`` replaced by its
diagonal, so each layer's constant correction uses its own curvature and none between
layers), every optimizer at the same ``--lr`` and ``--damping``, with the run setting
``kl_clip`` set by ``--kl-clip`` (``none``: no KL-clipping, so the update is ``lr·P∇`` and
its length is no longer fixed by the budget ``lr²ν²⟨∇, P∇⟩ = kl_clip``). Writes the study's
files (``settings.json``, ``results.csv``, ``verdicts.csv``, the per-run tables and
``report.html``) into ``--out``.

Reading: with KL-clipping on, the two-level step and KFAC's step have the same KL length, so
a gain can come from the direction only; with it off, a gain can also come from a longer step.
If the control keeps the Nicolaides gain, the cross-layer entries of the coarse matrix are not
what makes the difference (the study's third verdict).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.paper.studies import StudyOptions, write_study  # noqa: E402
from core.paper.study_two_level import CONTROL, CONTROLLED, run  # noqa: E402

OPTIMIZERS = ("kfac", CONTROLLED, CONTROL)


def _kl_clip(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--kl-clip must be > 0 or 'none', got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--kl-clip", type=_kl_clip, default=None)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    options = StudyOptions(
        "two_level",
        "curves-small",
        seeds=seeds,
        epochs=args.epochs,
        optimizers=OPTIMIZERS,
        lrs={"*": args.lr},
        dampings={"*": args.damping},
    )
    result = run(options, log=print, settings={"kl_clip": args.kl_clip})
    command = shlex.join(["python", "bench/two_level_controls.py", *(argv or sys.argv[1:])])
    report = write_study(args.out, options, result, command)
    print(result.tables["Final losses per optimizer (mean ± std over seeds)"].to_string())
    print(result.verdicts.to_string())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
