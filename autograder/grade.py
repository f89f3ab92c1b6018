"""``python -m autograder grade``: the public face of :mod:`autograder.grading` (see its modules)."""

from __future__ import annotations

from .grading.batch import BatchResult, grade, grade_notebook, grade_submission, write_gradebook, write_grades_csv
from .grading.intake import discover, match_notebooks
from .grading.notebook import assemble, load_submission, reference_calls, reference_cells, visible_source
from .grading.run import Settings, execute, run_notebook

__all__ = ["BatchResult", "Settings", "assemble", "discover", "execute", "grade", "grade_notebook",
           "grade_submission", "load_submission", "match_notebooks", "reference_calls", "reference_cells",
           "run_notebook", "visible_source", "write_gradebook", "write_grades_csv"]
