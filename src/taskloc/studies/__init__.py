"""Study registry; importing this package registers every built-in study."""
from . import (  # noqa: F401  (registration)
    activation_difficulty,
    base_model,
    core_isolation,
    fast_slow,
    sparse_frontier,
    sparsity_emergence,
    steering_compression,
    weight_delta,
)
from .base import STUDIES, Claim, Precondition, Study, StudyResult

__all__ = ["STUDIES", "Claim", "Precondition", "Study", "StudyResult"]
