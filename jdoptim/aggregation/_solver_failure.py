"""The one internal signal of the convex programs (CAGrad, NashMTL) that a solve failed.

Each caller catches it and falls back to documented weights with a warning; it never reaches the
user. (The dual-cone solvers of UPGrad and DualProj cannot fail on a Gramian; on a matrix that is
not one they raise ``DualConeSolverError``, a ``ValueError``.)
"""

from __future__ import annotations


class SolverFailure(Exception):
    """The convex program did not give a usable solution; the message says why."""
