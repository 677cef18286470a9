"""Training losses."""

from .pruned_rnnt import prune_windows, pruned_rnnt_loss, simple_rnnt_loss
from .rnnt import rnnt_loss, rnnt_loss_reference

__all__ = ["prune_windows", "pruned_rnnt_loss", "rnnt_loss", "rnnt_loss_reference",
           "simple_rnnt_loss"]
