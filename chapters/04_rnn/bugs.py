"""Chapter 4's deliberate bug: gru_cell ignores the hidden-side biases, so only ch04_gru_cell loses."""

SOLUTION_ID = "ch04_gru_cell_solution"
CODE = """
_correct_gru_cell = gru_cell

def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    return _correct_gru_cell(x, h, W_ih, W_hh, b_ih, 0.0 * b_hh)  # deliberate bug: b_hh forgotten
"""
LOSES = {"ch04_gru_cell"}
