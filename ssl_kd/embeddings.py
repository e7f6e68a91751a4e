"""What a teacher or a student hands to a loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Embeddings:
    """Outputs of one network on one batch.

    feat:   backbone features before any projection, [B, D_backbone].
    emb:    the embedding the loss compares, [B, D] (for a teacher its backbone feature, or its
            projection head's output with `teacher.embedding=head`; for a student its projector
            output, sized to the teacher's embedding width). Not normalized:
            losses normalize once, where their formula says so.
    logits: class logits [B, C] from a supervised teacher, else None.
    maps:   the backbone's stage outputs [B, C_i, H_i, W_i] in stage order (timm's
            `forward_intermediates`: a ResNet's stem then layer1..layer4; a ViT's blocks as token
            grids), only when the method declares `needs_maps`; else None.
    """

    feat: Tensor
    emb: Tensor
    logits: Tensor | None = None
    maps: list[Tensor] | None = None

    def map(self, fn) -> "Embeddings":
        """The same outputs with `fn` applied to every tensor (e.g. `Tensor.clone` out of inference mode)."""
        return Embeddings(feat=fn(self.feat), emb=fn(self.emb), logits=None if self.logits is None else fn(self.logits),
                          maps=None if self.maps is None else [fn(m) for m in self.maps])
