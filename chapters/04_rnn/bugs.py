"""Chapter 4's deliberate bugs: gru_cell ignores the hidden-side biases (only ch04_gru_cell loses), and
layer_norm_forward uses the unbiased variance (only ch04_layer_norm_forward loses)."""

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
    {
        "solution_id": "ch04_layer_norm_forward_solution",
        "code": """
_correct_layer_norm_forward = layer_norm_forward

def layer_norm_forward(x, gamma, beta, eps=1e-5):
    # deliberate bug: the unbiased variance (divided by D - 1), written through the correct function:
    # (x - mean) / sqrt(var * D / (D - 1) + eps) = c * (x - mean) / sqrt(var + c**2 eps) with c = sqrt((D - 1) / D)
    D = np.shape(x)[-1]
    c = np.sqrt((D - 1) / D)
    return gamma * c * _correct_layer_norm_forward(x, np.ones(D), np.zeros(D), eps * c * c) + beta
""",
        "loses": {"ch04_layer_norm_forward"},
    },
]
