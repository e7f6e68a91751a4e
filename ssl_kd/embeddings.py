"""What a teacher or a student hands to a loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Embeddings:
    """Outputs of one network on one batch.

    feat:   backbone features before any projection, [B, D_backbone].
    emb:    the embedding the loss compares, [B, D] (for a teacher the backbone feature itself;
            for a student its projector output, sized to the teacher's width). Not normalized:
            losses normalize once, where their formula says so.
    logits: class logits [B, C] from a supervised teacher, else None.
    """

    feat: Tensor
    emb: Tensor
    logits: Tensor | None = None
