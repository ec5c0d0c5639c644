"""Plan a training configuration from a cohort: ``plan_config`` (and ``python -m medres.plan``).

``fingerprint_cohort`` measures the scans (spacing, size, orientation, intensities, class balance,
lesions); ``plan_config`` derives a complete, commented configuration from it, sizing the batch by dry
training steps on the target device (``medres.plan.measure``). See ``medres.plan.planner`` for the rules.
"""

from medres.plan.fingerprint import fingerprint_cohort
from medres.plan.planner import Plan, PlanOptions, plan_config

__all__ = ["Plan", "PlanOptions", "plan_config", "fingerprint_cohort"]
