"""Growing the host model's catalogue after attach: its item-indexed ID tables gain zero rows, in place.

``fusionlayer.add_items`` validates the new items; the adapter's ``add_items`` appends their content
(:meth:`~fusionlayer.adapters.content.ItemContent.append`), flags them cold
(:meth:`~fusionlayer.adapters.cold.ColdItems.append`) and grows the host's tables here. The Parameters stay the
same objects, so an optimiser (and anything else) holding them keeps holding the grown ones.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["grow_item_embeddings", "grow_rows"]


def grow_rows(param: nn.Parameter, n_new: int) -> None:
    """Append ``n_new`` zero rows to ``param`` in place (the same Parameter object), and to its ``.grad``.

    Autograd caches a leaf's gradient accumulator, with the leaf's shape, for as long as any graph
    that used it is alive (e.g. the last step's ``loss`` still held by the training loop); ``.data``
    of another shape does not drop it, a change of dtype does. So the data passes through an empty
    tensor of another dtype first: the next backward builds an accumulator of the new shape.
    """
    with torch.no_grad():
        grown = torch.cat([param.data, param.data.new_zeros(n_new, *param.shape[1:])])
        other = torch.float64 if grown.dtype != torch.float64 else torch.float32
        param.data = grown.new_empty(0, dtype=other)
        param.data = grown
        if param.grad is not None:  # gradients accumulated before the growth keep their rows
            param.grad = torch.cat([param.grad, param.grad.new_zeros(n_new, *param.grad.shape[1:])])


def grow_item_embeddings(model: nn.Module, names: Iterable[str], n_new: int) -> list[nn.Parameter]:
    """Give each item embedding ``model.<name>`` (a wrapper's ``base_layer``) ``n_new`` zero rows (no ID signal),
    and ``model.n_items`` as many more; returns the grown Parameters."""
    grown = []
    for name in names:
        embedding = getattr(model, name)
        embedding = getattr(embedding, "base_layer", embedding)
        grow_rows(embedding.weight, n_new)  # same Parameter object, more rows
        embedding.num_embeddings += n_new
        grown.append(embedding.weight)
    model.n_items = int(model.n_items) + n_new
    return grown
