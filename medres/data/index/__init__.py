"""From a hospital export to a manifest: ``python -m medres.data.index ROOT --out DIR``.

``build`` walks the export and writes the manifest; ``series`` groups and chooses series; ``headers``
reads the fields it needs from each file; ``annotations`` links SEG/RTSTRUCT objects to their series."""

from medres.data.index.build import IndexResult, index_dicom, project_key

__all__ = ["index_dicom", "IndexResult", "project_key"]
