"""Chapter 3's deliberate bugs: conv2d_backward flips dw in space (a true-convolution habit), so only
ch03_conv2d_backward loses; residual_block_forward adds the shortcut after the last ReLU, so only
ch03_residual_block_forward loses."""

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
    {
        # Written out in full (a wrapper cannot undo the last ReLU); it uses only the block's parameters.
        "solution_id": "ch03_residual_block_forward_solution",
        "code": """
def residual_block_forward(x, block, training):
    def bn(h, layer):
        return F.batch_norm(h, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                            training=training, momentum=layer.momentum, eps=layer.eps)

    out = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=block.conv1.stride, padding=1), block.bn1))
    out = F.relu(bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2))
    if block.shortcut is None:
        return out + x  # deliberate bug: the shortcut is added after the last ReLU
    conv, norm = block.shortcut[0], block.shortcut[1]
    return out + bn(F.conv2d(x, conv.weight, stride=conv.stride), norm)
""",
        "loses": {"ch03_residual_block_forward"},
    },
]
