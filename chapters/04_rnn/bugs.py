"""Chapter 4's deliberate bug: gru_cell ignores the hidden-side biases, so only ch04_gru_cell loses."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch04_gru_cell_solution",
        "code": """
_correct_gru_cell = gru_cell

def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    return _correct_gru_cell(x, h, W_ih, W_hh, b_ih, 0.0 * b_hh)  # deliberate bug: b_hh forgotten
""",
        "loses": {"ch04_gru_cell"},
    },
]
