"""Chapter 9's deliberate bug: pseudo_labels thresholds the largest logit instead of the largest probability."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch09_pseudo_labels_solution",
        "code": """
_correct_pseudo_labels = pseudo_labels

def pseudo_labels(logits, threshold):
    # deliberate bug: the threshold is applied to the largest logit instead of the largest probability
    _, labels = _correct_pseudo_labels(logits, threshold)
    return logits.detach().max(dim=1).values >= threshold, labels
""",
        "loses": {"ch09_pseudo_labels"},
    },
]
