"""Chapter 7's deliberate bug: magnitude_prune_mask keeps the smallest weights instead of the largest."""

SOLUTION_ID = "ch07_magnitude_prune_mask_solution"
CODE = """
_correct_magnitude_prune_mask = magnitude_prune_mask

def magnitude_prune_mask(weight, sparsity):
    # deliberate bug: rank by -|w|, so the largest weights are removed
    return _correct_magnitude_prune_mask(-1.0 / (weight.abs() + 1e-12), sparsity)
"""
LOSES = {"ch07_magnitude_prune_mask"}
