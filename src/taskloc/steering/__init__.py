"""Activation steering: extract a direction from (prompt, positive, negative) pairs, add it to the
residual stream during generation, and choose its strength from a KL budget.

The convention (one for every model, tested in tests/steering):

- layer L (0-based, 0 .. n_layer - 1) names ``blocks.{L}.hook_resid_post``: the output of block
  L, which is Hugging Face's ``hidden_states[L + 1]`` (the last block's output is reported by HF
  after the final norm, so there the equality holds for blocks 0 .. n_layer - 2 only);
- the vector is read there and generation edits that same site: the edited output of block L is
  what block L + 1 reads;
- v = mean over pairs of (h(prompt + positive) - h(prompt + negative)), so a positive gamma moves
  the state toward the positive completions (gamma = 1 carries the mean negative state onto the
  mean positive one at the edited position).

Modules: ``extract`` (pairs -> vector), ``inject`` (the scoped hook), ``calibrate`` (gamma from a
KL budget), ``vector`` (the vector file), ``text`` (ids through each model's codec), ``data`` (the
JSONL files), ``command`` (the CLI verbs). Nothing is imported here, so `taskloc --help` does not
load torch.
"""
