"""Study registry; importing this package registers every built-in study."""
from . import base_model  # noqa: F401
from .base import STUDIES, Claim, Study, StudyResult

__all__ = ["STUDIES", "Claim", "Study", "StudyResult"]
from . import weight_delta  # noqa: F401
