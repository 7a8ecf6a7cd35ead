"""The seed paper's experiments (``python -m core reproduce``): what to run, running it, the
verdicts, the report, and the results folders the app's "Paper reproductions" page reads.

One job per module, each importing only the ones above it in this list (and core.engine,
core.training, core.views; never core.server):

* :mod:`~core.paper.spec` — the experiments, the authors' settings, the budgets and choices,
  :class:`~core.paper.spec.ReproduceSpec` (one reproduction, checked) and the layers it tracks;
* :mod:`~core.paper.verdicts` — the claims' verdict rules: training (one-sd rule at equal
  epochs and equal wall time), quality (share of points below KFAC), per-layer claims;
* :mod:`~core.paper.safe_read` — reading the host's results folder safely: no link out of it,
  size caps, the parse cache, :class:`~core.paper.safe_read.ReportError`;
* :mod:`~core.paper.checks` — the checks of ``settings.json`` and ``results.csv`` read back;
* :mod:`~core.paper.contents` — what a report shows: summary, settings table, figures, notes,
  ``report.html``, and :class:`~core.paper.contents.Reproduction` (one report, made once);
* :mod:`~core.paper.files` — the results folder: writing it, the data files' names, sizes and
  SHA-256, listing and loading the host's reports;
* :mod:`~core.paper.record` — what ``settings.json`` says about a reproduction;
* :mod:`~core.paper.runner` — running the experiments: training runs, time budgets, the
  multi-layer quality run, the metric cost estimate.
* :mod:`~core.paper.step` — the ``step`` experiment (issue 21): along a training trajectory,
  every method's fidelity to F, its damped step against the exact one, and a one-step
  look-ahead; the methods' training losses;
* :mod:`~core.paper.step_report` — its verdict (rank correlations with the training ranking, and
  how they move with λ), its markdown report and its command line
  (``python -m core.paper.step_report``).

Public entry points: the command line uses :class:`~core.paper.spec.ReproduceSpec`,
:func:`~core.paper.runner.run_reproduction` and :func:`~core.paper.files.write_reproduction`;
the app's page uses :func:`~core.paper.files.results_dir`,
:func:`~core.paper.files.list_reports`, :func:`~core.paper.files.load_report` and
:class:`~core.paper.safe_read.ReportError` (through ``core``'s public API); the benchmarks add
:func:`~core.paper.verdicts.training_verdicts`, :func:`~core.paper.verdicts.quality_verdicts`
and :func:`~core.paper.contents.summary_table`.
"""
