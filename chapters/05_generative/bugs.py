"""Chapter 5's deliberate bug: generator_loss returns the minimax loss for the default (non-saturating) case."""

SOLUTION_ID = "ch05_generator_loss_solution"
CODE = """
_correct_generator_loss = generator_loss

def generator_loss(fake_logits, minimax=False):
    return _correct_generator_loss(fake_logits, minimax=True)  # deliberate: always the minimax loss
"""
LOSES = {"ch05_generator_loss"}
