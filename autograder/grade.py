"""``python -m autograder grade``: the public face of :mod:`autograder.grading` (see its modules)."""

from __future__ import annotations

from .grading.batch import (
    BatchResult,
    grade,
    grade_notebook,
    grade_packed,
    grade_submission,
    write_gradebook,
    write_graded,
    write_grades_csv,
)
from .grading.export import export_grades
from .grading.gradebook import GradebookStore
from .grading.intake import discover, match_notebooks
from .grading.notebook import assemble, load_submission, reference_calls, reference_cells, visible_source
from .grading.run import Settings, execute, run_notebook
from .grading.task import GradedSubmission, GradeTask, PackedSubmission, pack_submission

__all__ = ["BatchResult", "GradeTask", "GradebookStore", "GradedSubmission", "PackedSubmission", "Settings",
           "assemble", "discover", "execute", "export_grades", "grade", "grade_notebook", "grade_packed",
           "grade_submission", "load_submission", "match_notebooks", "pack_submission", "reference_calls",
           "reference_cells", "run_notebook", "visible_source", "write_gradebook", "write_graded",
           "write_grades_csv"]
