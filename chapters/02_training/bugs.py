"""Chapter 2's deliberate bug: dropout rescales at eval time instead of training time, so only ch02_dropout loses."""

SOLUTION_ID = "ch02_dropout_solution"
CODE = """
_correct_dropout_forward = dropout_forward

def dropout_forward(x, p, training, rng):
    if not training:
        return x * (1 - p)  # deliberate: old-style scaling at test time
    return _correct_dropout_forward(x, p, training, rng)
"""
LOSES = {"ch02_dropout"}
