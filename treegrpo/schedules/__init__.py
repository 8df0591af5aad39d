"""Branching schedules: the SDE window of each iteration and the branching factor."""
from .adaptive import AdaptiveWindow
from .windows import BranchPlan, EveryStep, FixedWindow, RandomWindow, Schedule, SlidingWindow

__all__ = ["AdaptiveWindow", "BranchPlan", "EveryStep", "FixedWindow", "RandomWindow", "Schedule",
           "SlidingWindow"]
