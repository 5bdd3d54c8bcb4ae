"""Fault injection for the fault-tolerance tests: a real worker process death, once."""

import os
from pathlib import Path


def die_once(at_round: int, rank: int, marker: str):
    """An XGBoost callback that kills its own Ray Train worker process (``os._exit``, no
    cleanup, as an OOM kill or a lost node would) after ``at_round`` rounds on worker ``rank``,
    the first time only: the marker file remembers it happened."""
    import ray.train
    import xgboost

    class DieOnce(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if (ray.train.get_context().get_world_rank() == rank
                    and model.num_boosted_rounds() >= at_round and not Path(marker).exists()):
                Path(marker).write_text(f"killed after round {model.num_boosted_rounds()}")
                os._exit(1)
            return False

    return DieOnce()
