"""Chapter 1's deliberate bug: matmul_backward returns -db, so only ch01_matmul_backward loses."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch01_matmul_backward_solution",
        "code": """
_correct_matmul_backward = matmul_backward

def matmul_backward(dout, a, b):
    da, db = _correct_matmul_backward(dout, a, b)
    return da, -db  # deliberate sign error in db
""",
        "loses": {"ch01_matmul_backward"},
    },
]
