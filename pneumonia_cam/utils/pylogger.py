"""Rank-aware logging: in multi-process runs only rank zero speaks unless asked otherwise."""

import logging
import os
from collections.abc import Mapping

from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only

# Lightning sets the process rank on import; the serving path runs without Lightning, so set it the same way
# (the launchers' environment variables, else 0) where Lightning has not.
if not hasattr(rank_zero_only, "rank"):
    _ranks = (os.environ.get(key) for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))
    rank_zero_only.rank = int(next((rank for rank in _ranks if rank is not None), 0))


class RankedLogger(logging.LoggerAdapter):
    """A logger that prefixes the process rank and logs on rank zero only by default."""

    def __init__(
        self, name: str = __name__, rank_zero_only: bool = True, extra: Mapping | None = None
    ) -> None:
        super().__init__(logger=logging.getLogger(name), extra=extra)
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: str, *args, rank: int | None = None, **kwargs) -> None:
        """Log on rank zero (or on `rank`), prefixing the message with the rank."""
        if not self.isEnabledFor(level):
            return
        msg, kwargs = self.process(msg, kwargs)
        current_rank = getattr(rank_zero_only, "rank", 0)
        msg = rank_prefixed_message(msg, current_rank)
        if self.rank_zero_only and current_rank != 0:
            return
        if rank is None or current_rank == rank:
            self.logger.log(level, msg, *args, **kwargs)
