"""Chapter 3's deliberate bug: conv2d_backward flips dw in space (a true-convolution habit), so only
ch03_conv2d_backward loses."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch03_conv2d_backward_solution",
        "code": """
_correct_conv2d_backward = conv2d_backward

def conv2d_backward(dout, x, w, stride=1, padding=0, dilation=1):
    dx, dw, db = _correct_conv2d_backward(dout, x, w, stride, padding, dilation)
    return dx, dw[:, :, ::-1, ::-1], db  # deliberate bug: the kernel gradient is flipped
""",
        "loses": {"ch03_conv2d_backward"},
    },
]
