"""Synthetic cohorts generated locally: ``python -m medres.data.demo --out X [--kind cxr] [--layout export]``.

``ct`` the chest-CT cohort, ``cxr`` the chest X-ray cohort, ``export`` the CT cohort as a hospital export,
``folder`` how a generator replaces its folder."""

from medres.data.demo.ct import DEMO_VERSION, FULLRES_SITES, SITES, demo_sites, generate_demo

__all__ = ["generate_demo", "DEMO_VERSION", "SITES", "FULLRES_SITES", "demo_sites"]
