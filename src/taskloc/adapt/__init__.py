"""Fast and slow adaptation (REFERENCE C5): a prompt-prefix population (fast channel) and
KL-penalised parameter steps (slow channel), with one-channel baselines."""
from .learner import KINDS, Learner, LearnerConfig, accuracy, answer_kl, probe_kl
from .prompt_search import PromptSearch, PromptSearchConfig, pareto_winners

__all__ = ["KINDS", "Learner", "LearnerConfig", "PromptSearch", "PromptSearchConfig", "accuracy", "answer_kl",
           "pareto_winners", "probe_kl"]
