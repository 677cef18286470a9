"""Training losses."""

from .rnnt import rnnt_loss, rnnt_loss_reference

__all__ = ["rnnt_loss", "rnnt_loss_reference"]
