"""The grader: learners' notebooks graded against the solutions with strict nbval, into a gradebook.

``make grade SUBMISSIONS=<dir> OUT=<dir>`` (``python -m helpers.grade``); docs/instructor-guide.md is the
instructor's side. The notebook contract it relies on (tags, exercise ids, discovery, kernelspec) is
:mod:`helpers.contract`, shared with the generator.

Modules, in the order a notebook meets them:

``references``    the solutions: exercises, the check cells that are the reference, the learner templates
``submissions``   the class folder: finding and reading a learner's notebook (read-only, bad files explained)
``review``        learner code that could fool the checks (AST heuristics for a human look, never points)
``graded_copy``   the learner's cells with every check cell restored from the solution
``course_files``  the snapshot of ``helpers/`` and ``tests/nbval.cfg`` every kernel gets a fresh copy of
``isolation``     each run's private environment, killing its process tree, the subreaper sweep
``watch``         changes to the course and the grading packages while notebooks run, flagged loudly
``nbval_run``     one nbval run in its own process tree, and its signed per-cell records
``nbval_plugin``  the pytest plugin inside nbval's process that writes those records
``notebook``      one notebook graded: runs, re-runs around a hung cell, a verdict per exercise
``gradebook``     rows, merging a regrade, the CSV/JSON files; ``reports``: report.md and report.html
``run``           a grading run over a class
``cli``           the command line

This package's ``__init__`` imports nothing: nbval's process loads ``nbval_plugin`` from it.
"""
