"""Chapter 7's deliberate bug: magnitude_prune_mask keeps the smallest weights instead of the largest."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch07_magnitude_prune_mask_solution",
        "code": """
_correct_magnitude_prune_mask = magnitude_prune_mask

def magnitude_prune_mask(weight, sparsity):
    # deliberate bug: rank by -|w|, so the largest weights are removed
    return _correct_magnitude_prune_mask(-1.0 / (weight.abs() + 1e-12), sparsity)
""",
        "loses": {"ch07_magnitude_prune_mask"},
    },
]
