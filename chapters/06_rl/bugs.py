"""Chapter 6's deliberate bug: dqn_td_target ignores termination, so only ch06_dqn_td_target loses."""

# Each bug: the grade_id of a solution cell, code appended to that cell (it wraps the correct
# function, so it does not depend on how the solution is written), and the graded cells that must
# lose their points. carol hands in the instructor's solutions with every bug of the list.
BUGS = [
    {
        "solution_id": "ch06_dqn_td_target_solution",
        "code": """
_correct_dqn_td_target = dqn_td_target

def dqn_td_target(rewards, next_q, terminated, gamma):
    return _correct_dqn_td_target(rewards, next_q, torch.zeros_like(terminated), gamma)  # bootstraps past the end
""",
        "loses": {"ch06_dqn_td_target"},
    },
]
