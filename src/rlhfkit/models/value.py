"""Value models for PPO on language models (docs/design.md §4.8): a value for every response token.

- ``reward`` (default): a separate model initialised from the reward model's weights (N+ paper). The
  backbone runs over prompt + response and the reward model's score head is applied to every position,
  not just the last one; the reward normalisation (mean, std) is folded into that head, so at the start
  the value predicts the normalised score the PPO reward uses.
- ``head``: a linear head on the policy's last hidden states (shared backbone; values come out of the
  policy's own passes for free).
- a model SPEC: a sequence classifier loaded from the spec, used like ``reward``.
A separate value model must share the policy's tokenizer (values are per policy token); when the reward
model's tokenizer differs (MiniLM) or the reward is a judge, the trainer falls back to ``head`` and says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlhfkit.models.rollout import response_hidden, trim


class ValueHead(nn.Module):
    """hidden (..., H) → value (..., 1), starting at exactly 0.

    Not the N+ code's std 1/√(H+1): a decoder's last hidden states are large (SmolLM2: norm ≈ 45 per token),
    so a random head gives values with std ≈ 1 per token, more than the normalised reward's spread. GAE then
    turns that noise into the advantages (explained variance −2 to −4 for the first 10+ updates, no learning
    on the tutor recipe). From 0, the first advantages are the whitened returns and the head learns from there.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype))


class ValueModel(nn.Module):
    """A sequence classifier turned per-token: its backbone, then its score head on every position.

    The head is rebuilt with a bias so that the reward normalisation ``(score − mean) / std`` can be folded
    in; checkpoints keep its state separately (``head.state_dict()``), as a reloaded classifier has no bias.
    """

    def __init__(self, classifier, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        score = classifier.score  # decoder-style classifiers (Llama, GPT-2, ...) score with a linear head
        head = nn.Linear(score.in_features, 1, bias=True, dtype=score.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(score.weight)
            head.bias.copy_(score.bias if score.bias is not None else torch.zeros(1))
        fold_normalisation(head, mean, std)
        classifier.score = head
        self.classifier, self.head = classifier, head
        self.backbone = getattr(classifier, classifier.base_model_prefix)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, prompt_width: int) -> Tensor:
        """Values of the states before each response token, (B, R); padding columns shared by all rows are cut."""
        query_mask, response_mask = attention_mask[:, :prompt_width], attention_mask[:, prompt_width:]
        first, width = trim(input_ids[:, :prompt_width], query_mask, response_mask)
        ids = input_ids[:, first : prompt_width + width]
        mask = attention_mask[:, first : prompt_width + width]
        hidden = response_hidden(self.backbone, ids, mask, prompt_width - first)
        values = self.head(hidden).squeeze(-1).float()
        r = input_ids.shape[1] - prompt_width
        return values if values.shape[1] == r else nn.functional.pad(values, (0, r - values.shape[1]))


def can_be_value_model(classifier) -> bool:
    """True for decoder classifiers whose score head is a plain linear layer on each position's hidden state."""
    return isinstance(getattr(classifier, "score", None), nn.Linear) and hasattr(classifier, classifier.base_model_prefix)


@torch.no_grad()
def fold_normalisation(head: nn.Linear, mean: float, std: float) -> None:
    """Make ``head`` (with a bias) output (score − mean) / std: values start on the normalised reward scale."""
    head.weight.div_(std)
    head.bias.sub_(mean).div_(std)
