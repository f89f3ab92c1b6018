"""Chapter 1's deliberate bug: matmul_backward returns -db, so only ch01_matmul_backward loses."""

SOLUTION_ID = "ch01_matmul_backward_solution"
CODE = """
_correct_matmul_backward = matmul_backward

def matmul_backward(dout, a, b):
    da, db = _correct_matmul_backward(dout, a, b)
    return da, -db  # deliberate sign error in db
"""
LOSES = {"ch01_matmul_backward"}
