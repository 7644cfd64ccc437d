"""Per-router expert load over a logging window, summed over ranks, and the collapse warning."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import distributed


class RouterMonitor:
    """Warns once when a router's effective number of experts, exp(entropy of its load), falls
    below ``ratio * E``, and says when it recovers."""

    def __init__(self, ratio: float, info: distributed.DistInfo, say: Callable[[str], None]):
        self.ratio, self.info, self.say = ratio, info, say
        self.collapsed: set[str] = set()

    def reduce(self, load: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Per-router fraction of dispatches per expert over the window, summed over ranks."""
        if not load:
            return {}
        names = sorted(load)
        flat = torch.cat([load[n].flatten() for n in names])
        flat = self.info.all_reduce_sum(flat).cpu()
        out, i = {}, 0
        for name in names:
            e = load[name].numel()
            counts = flat[i:i + e]
            i += e
            out[name] = (counts / counts.sum().clamp_min(1)).tolist()
        return out

    def check(self, load: dict[str, list[float]], step: int) -> None:
        for name, frac in load.items():
            e = len(frac)
            if e < 2:
                continue
            p = np.asarray(frac, dtype=np.float64)
            p = p[p > 0]
            n_eff = float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0
            if n_eff < self.ratio * e and name not in self.collapsed:
                self.collapsed.add(name)
                top = ", ".join(f"{x:.2f}" for x in frac)
                self.say(f"warning: router {name} has collapsed onto {n_eff:.1f} of {e} experts at step {step} "
                         f"(load per expert: {top}); consider a larger router_aux_loss_coef")
            elif n_eff >= self.ratio * e and name in self.collapsed:
                self.collapsed.discard(name)
                self.say(f"router {name} recovered ({n_eff:.1f} effective experts of {e})")
