"""The dlbook grading tools: nbgrader configuration, releases, autograding, feedback, grades, workspace."""

__version__ = "0.1.0"
