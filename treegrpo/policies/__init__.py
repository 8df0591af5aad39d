"""Generator wrappers behind one interface (:class:`Policy`)."""
from .base import Policy
from .toy import ToyFlowPolicy

__all__ = ["Policy", "ToyFlowPolicy"]
