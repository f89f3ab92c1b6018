"""nbgrader's *Fetch* in the classroom: the learner's own release when there is one, else the default.

``python -m autograder classroom release CHAPTER --per-student`` writes each learner's copy, with their
values (:mod:`autograder.variants`), to ``EXCHANGE/<course>/personal/<student>/<chapter>/``, owned by the
learner's system user, mode 0700. The learners' nbgrader configuration (written by ``classroom start``)
names :class:`PersonalFetchAssignment` as the exchange's fetch, so the Assignments tab's *Fetch* copies
that folder; a chapter released without ``--per-student`` (or a learner added to the roster later) gets
the default release from ``outbound/`` as before.

This runs in the learner's own server, as the learner: it reads only what the learner may read (their
own folder; the others' are 0700 and owned by them) and it decides nothing about grading. The grader
derives each learner's values from the course secret, never from what was fetched or submitted.
"""

from __future__ import annotations

import os

from nbgrader.exchange.default.fetch_assignment import ExchangeFetchAssignment
from nbgrader.utils import get_username

PERSONAL = "personal"


class PersonalFetchAssignment(ExchangeFetchAssignment):
    """Fetch ``personal/<user>/<assignment>`` when it exists, else ``outbound/<assignment>`` (nbgrader's default)."""

    def init_src(self) -> None:
        super().init_src()  # the course, access to it and the default release: checked as nbgrader does
        mine = os.path.join(self.course_path, PERSONAL, get_username(), self.coursedir.assignment_id)
        if os.path.isdir(mine):
            if not os.access(mine, os.R_OK | os.X_OK):
                self.fail(f"your own release of {self.coursedir.assignment_id} is at {mine}, but you cannot "
                          "read it: ask your instructor to release it to you again")
            self.src_path = mine
            self.log.info("Fetching your own release of %s (values drawn for you)", self.coursedir.assignment_id)
