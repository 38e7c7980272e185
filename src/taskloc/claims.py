"""The published claims taskloc tests (C0-C6): where each comes from, what it asserts, which
study tests it and the rule that decides it.

One source for every place a user reads them: `taskloc claims`, the report's claims section and
docs/claims.md (generated from here; a test keeps the file in step). The rules are not typed
twice: they are the deciding rule objects' own ``describe()`` at the study's default settings.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedClaim:
    id: str
    title: str
    source: str  # paper, venue, year, public code if any
    asserts: str  # what the paper asserts, in our words
    how_measured: str  # how the authors measured it


CLAIMS: tuple[PublishedClaim, ...] = (
    PublishedClaim(
        "C0", "Full fine-tuning updates land in sparse subsets of the weights (the open bridge)",
        "No single paper: grafting (Panigrahi et al., ICML 2023), TALL masks (Wang et al., ICML 2024), LT-SFT (Ansell et al., "
        "ACL 2022), DARE (Yu et al., ICML 2024), TIES (Yadav et al., NeurIPS 2023), task arithmetic (Ilharco et al., ICLR 2023).",
        "Whether the skill a full fine-tune adds lives in a small set of weights: (a) magnitude-localised — the top-k% of "
        "|delta| keeps the skill and a random k% does not; (b) redundant — a random k% rescaled by 1/k (DARE) works as well; "
        "(c) dense — neither works below large k.",
        "Grafting theta_pre + mask * (theta_ft - theta_pre) with a mask over ~0.01% of parameters optimised on the task "
        "recovers >95% of fine-tuned performance; DARE drops 90-99% of the delta at random and keeps performance; compared "
        "against a dense Gaussian delta of the same per-tensor scale and a fine-tune on shuffled labels."),
    PublishedClaim(
        "C1", "Hidden states get sparser as tasks get harder or farther out of distribution",
        "Jin et al., 'Farther the Shift, Sparser the Representation', arXiv 2603.03415, 2026 (code MingyuJ666/sparsityLLM).",
        "The last-layer hidden state of the last prompt token is sparser (top-k% mass and energy, Hoyer, Gini, 'l0', "
        "effective rank) on harder and less familiar inputs; sparsity can pick in-context demonstrations.",
        "Difficulty graded by MATH levels 1-5, context length, added options, conflicting context, ID vs OOD splits; effects "
        "are small (top-5% energy 0.2726 vs 0.2744 ID vs OOD in the authors' toy run)."),
    PublishedClaim(
        "C2", "Dense for the familiar, sparse for the unfamiliar — learned during pretraining",
        "Jin et al. 2026 (as C1), pretraining section.",
        "The familiar/unfamiliar sparsity gap is absent at initialisation and grows with training; on familiar data "
        "representations first sparsify, then densify as accuracy saturates (a U-curve).",
        "A small Llama trained from scratch on a synthetic knowledge graph; ID (memorised) vs OOD (multi-step) splits; "
        "metrics every 200 steps."),
    PublishedClaim(
        "C3", "One steering direction from a few pairs compresses chain-of-thought",
        "Azizi et al., 'Activation Steering for Chain-of-Thought Compression', arXiv 2507.04742, 2025 (code ArminAzizi98/ASC).",
        "Adding gamma * v, v = mean(h_concise - h_verbose) over 50-100 pairs at one middle-late layer's last token, at every "
        "generated token shortens reasoning by 33-67% at equal accuracy, training-free.",
        "Residual stream at one layer, last token; gamma bounded by a KL budget on a calibration set; GSM8K 2610 -> 850 "
        "tokens at accuracy 89.1 -> 89.3, 2.73x wall-clock speed-up."),
    PublishedClaim(
        "C4", "Isolating each task's core parameters beats multi-task fine-tuning",
        "Wang, Liang, Peng, 'Not All Parameters Are Created Equal: Smart Isolation Boosts Fine-Tuning Performance' (CPI-FT), "
        "arXiv 2508.21741, EMNLP 2025 (no public code).",
        "Per-task core regions (top p% of |delta|), grouped by Jaccard overlap, transplanted and frozen while the rest is "
        "merged by SLERP and lightly fine-tuned, beat mixed multi-task SFT and forget less.",
        "LLaMA-2-7B: GSM8K 48.2 -> 53.5, LogiQA 55.3 -> 59.1 vs full SFT; forgetting A->B 24.5 points under full SFT, 5.7 "
        "under CPI-FT."),
    PublishedClaim(
        "C5", "Route lessons to a fast textual channel, keep parameter updates minimal",
        "Tiwari et al., 'Learning, Fast and Slow: Towards LLMs That Adapt Continually', arXiv 2605.12484, 2026.",
        "A learner that evolves prompts (fast weights) and takes few KL-penalised parameter steps (slow weights) reaches the "
        "same reward in 1.4-3x fewer steps with up to 70% less drift, and keeps learning across task switches.",
        "Prompt population with a Pareto front over examples; RL with a KL penalty to the start; cycles alternate the two."),
    PublishedClaim(
        "C6", "At equal compute, larger sparse-attention models beat smaller dense ones",
        "Nawrot et al., 'The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs', arXiv 2504.17768, 2025 "
        "(code PiotrNawrot/sparse-frontier).",
        "Training-free sparse attention (vertical-slash, block-sparse, FlexPrefill, Quest, SnapKV): at equal FLOPs a larger "
        "sparse model beats a smaller dense one on long sequences; decoding tolerates more sparsity than prefilling.",
        "Qwen2.5 7B-72B, 16k-128k tokens, sparsity up to 0.95, 9 long-context tasks."),
)


def claim_rules() -> dict[str, list[tuple[str, str, str]]]:
    """Claim id -> [(study, what is tested, rule text)] from every registered study's rule objects
    at its default settings."""
    from .studies import STUDIES
    from .studies.verdicts import explain

    out: dict[str, list[tuple[str, str, str]]] = {c.id: [] for c in CLAIMS}
    for name in STUDIES.names():
        study = STUDIES.get(name)
        for claim_id, what, rule in study.rules(study.Config()):
            out.setdefault(claim_id, []).append((name, what, explain(rule)))
    return out


def claims_markdown() -> str:
    """docs/claims.md."""
    rules = claim_rules()
    lines = ["# The claims taskloc tests", "",
             "Generated from `src/taskloc/claims.py` and the studies' rule objects (`taskloc claims` prints the same); "
             "do not edit by hand.", ""]
    for c in CLAIMS:
        lines += [f"## {c.id}. {c.title}", "", f"- **Source:** {c.source}", f"- **Asserts:** {c.asserts}",
                  f"- **How its authors measured it:** {c.how_measured}"]
        if rules.get(c.id):
            for study, what, rule in rules[c.id]:
                lines.append(f"- **Tested by** `{study}` — {what}. **Rule:** {rule}.")
        else:
            lines.append("- **Tested by:** no study yet.")
        lines.append("")
    return "\n".join(lines)
