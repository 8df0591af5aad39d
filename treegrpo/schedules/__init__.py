"""Branching schedules: the SDE window of each iteration and the branching factor."""
from .windows import BranchPlan, EveryStep, FixedWindow, RandomWindow, Schedule, SlidingWindow

__all__ = ["BranchPlan", "EveryStep", "FixedWindow", "RandomWindow", "Schedule", "SlidingWindow"]
