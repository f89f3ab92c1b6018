"""Chapter 2's deliberate bug: dropout rescales at eval time instead of training time, so only ch02_dropout loses."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch02_dropout_solution",
        "code": """
_correct_dropout_forward = dropout_forward

def dropout_forward(x, p, training, rng):
    if not training:
        return x * (1 - p)  # deliberate: old-style scaling at test time
    return _correct_dropout_forward(x, p, training, rng)
""",
        "loses": {"ch02_dropout"},
    },
]
