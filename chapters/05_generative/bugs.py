"""Chapter 5's deliberate bug: generator_loss returns the minimax loss for the default (non-saturating) case."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch05_generator_loss_solution",
        "code": """
_correct_generator_loss = generator_loss

def generator_loss(fake_logits, minimax=False):
    return _correct_generator_loss(fake_logits, minimax=True)  # deliberate: always the minimax loss
""",
        "loses": {"ch05_generator_loss"},
    },
]
