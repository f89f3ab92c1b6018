"""Chapter 8's deliberate bug: ring_allreduce returns the mean instead of the sum.

The wrapper runs in the 2- and 3-process gloo groups the tests launch (it travels there by value
with the learner's function), so only ch08_ring_allreduce loses its points.
"""

SOLUTION_ID = "ch08_ring_allreduce_solution"
CODE = """
_correct_ring_allreduce = ring_allreduce

def ring_allreduce(tensor):
    _correct_ring_allreduce(tensor)
    tensor /= dist.get_world_size()  # deliberate: the mean, not the sum
    return tensor
"""
LOSES = {"ch08_ring_allreduce"}
