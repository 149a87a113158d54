"""The grader: learners' notebooks graded against the solutions with strict nbval, into a gradebook.

``make grade SUBMISSIONS=<dir> OUT=<dir>`` (``python -m helpers.grade``); docs/instructor-guide.md is the
instructor's side. The notebook contract it relies on (tags, exercise ids, discovery, kernelspec) is
:mod:`helpers.contract`, shared with the generator.

Modules, in the order a notebook meets them:

``references``    the solutions: exercises, the check cells that are the reference, demo cells, learner templates
``submissions``   the class folder: finding and reading a learner's notebook (read-only, bad files explained)
``planning``      the grading command's plan: what runs, what is decided at once, the payloads, the run's identity
``plan``          what travels through Temporal (the plan, requests, submissions), ids, queues, limits
``workflows``     the run workflow, a child per learner, an activity per notebook (retries, payload pass-through)
``worker``        a grading worker on the queue of its course files' fingerprint (``make grade-worker``)
``course_files``  the snapshot of the course every kernel gets a copy of, and its fingerprint
``graded_copy``   the learner's cells, demo cells left out, every check cell restored from the solution
``review``        learner code that could fool the checks (AST heuristics for a human look, never points)
``isolation``     each run's private environment, killing its process tree, the subreaper sweep, dead graders' runs
``watch``         changes to the course and the grading packages while notebooks run, flagged loudly
``nbval_run``     one nbval run in its own process tree, and its signed per-cell records
``nbval_plugin``  the pytest plugin inside nbval's process that writes those records
``notebook``      one notebook graded: runs, re-runs around a hung cell, a verdict per exercise
``follow``        the command watching the run: progress, grades collected from the learners' histories
``progress``      the terminal's progress bar and lines
``gradebook``     rows, merging a regrade, the CSV/JSON files; ``reports``: report.md and report.html
``run``           ``grade()``: start or resume a run, grade with local slots, write the gradebook
``cli``           the command line of ``make grade``; ``check``: ``make check``, the learner's own table

This package's ``__init__`` imports nothing: nbval's process loads ``nbval_plugin`` from it.
"""
