"""Chapter 6's deliberate bug: dqn_td_target ignores termination, so only ch06_dqn_td_target loses."""

SOLUTION_ID = "ch06_dqn_td_target_solution"
CODE = """
_correct_dqn_td_target = dqn_td_target

def dqn_td_target(rewards, next_q, terminated, gamma):
    return _correct_dqn_td_target(rewards, next_q, torch.zeros_like(terminated), gamma)  # bootstraps past the end
"""
LOSES = {"ch06_dqn_td_target"}
