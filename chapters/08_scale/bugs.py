"""Chapter 8's deliberate bug: ring_allreduce returns the mean instead of the sum.

The wrapper runs in the 2- and 3-process gloo groups the tests launch (it travels there by value
with the learner's function), so only ch08_ring_allreduce loses its points.
"""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch08_ring_allreduce_solution",
        "code": """
_correct_ring_allreduce = ring_allreduce

def ring_allreduce(tensor):
    _correct_ring_allreduce(tensor)
    tensor /= dist.get_world_size()  # deliberate: the mean, not the sum
    return tensor
""",
        "loses": {"ch08_ring_allreduce"},
    },
]
