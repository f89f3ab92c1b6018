"""Chapter 3's deliberate bug: conv2d_backward flips dw in space (a true-convolution habit), so only
ch03_conv2d_backward loses."""

SOLUTION_ID = "ch03_conv2d_backward_solution"
CODE = """
_correct_conv2d_backward = conv2d_backward

def conv2d_backward(dout, x, w, stride=1, padding=0, dilation=1):
    dx, dw, db = _correct_conv2d_backward(dout, x, w, stride, padding, dilation)
    return dx, dw[:, :, ::-1, ::-1], db  # deliberate bug: the kernel gradient is flipped
"""
LOSES = {"ch03_conv2d_backward"}
