"""A PACS as a source and a destination: DICOMweb and DIMSE pull (``python -m medres.data.pull``) and
the push of predicted SEG and SR objects (``python -m medres.predict --push``)."""
