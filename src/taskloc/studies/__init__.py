"""Study registry; importing this package registers every built-in study."""
from . import base_model, weight_delta  # noqa: F401  (registration)
from .base import STUDIES, Claim, Precondition, Study, StudyResult

__all__ = ["STUDIES", "Claim", "Precondition", "Study", "StudyResult"]
