"""The confined grader behind ``python -m autograder grade``, one module per job.

- :mod:`.notebook`: reference and submitted cells, assembling the notebook to run, static checks;
- :mod:`.intake`: finding each student's notebooks in a folder, a ``submitted/`` tree or an LMS zip;
- :mod:`.sandbox`: the confined learner kernel (bubblewrap, rlimits, its own uid);
- :mod:`.run`: executing the learner's cells in that kernel;
- :mod:`.agent` (runs inside the kernel) and :mod:`.judge` (never runs learner code): the tests;
- :mod:`.feedback`: feedback pages; :mod:`.batch`: a submission, a batch, grades.csv, the gradebook;
- :mod:`.task`: a submission packed for a worker on any host; :mod:`.executors`: the local pool or Dask;
- :mod:`.gradebook`: the nbgrader gradebook, one transaction per submission (SQLite or PostgreSQL);
- :mod:`.export`: grades for an LMS (Canvas, Moodle, a long CSV).
"""
