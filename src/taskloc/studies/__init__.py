"""Study registry; importing this package registers every built-in study."""
from . import activation_difficulty, base_model, sparsity_emergence, weight_delta  # noqa: F401  (registration)
from . import core_isolation  # noqa: F401  (registration)
from . import fast_slow  # noqa: F401  (registration)
from . import sparse_frontier  # noqa: F401  (registration)
from . import steering_compression  # noqa: F401  (registration)
from .base import STUDIES, Claim, Precondition, Study, StudyResult

__all__ = ["STUDIES", "Claim", "Precondition", "Study", "StudyResult"]
