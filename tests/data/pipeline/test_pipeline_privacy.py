"""No patient data leaves through the pipeline or the cache: a series built from pydicom's CT_small
(PatientName, PatientID, StudyDate, InstitutionName, UIDs) goes through loading, the training and
evaluation pipelines, the disk cache and a loader; none of those values may appear in any file written,
any log line, any sample's metadata or any error message."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medres.config import DataConfig
from medres.data import load_image, read_manifest
from medres.data.pipeline.datasets import build_dataset, build_loader, manifest_to_records
from medres.errors import DataError
from tests.data.dicom_factory import CT_SMALL, write_series


def _secrets(folder: Path) -> list[str]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    values = [str(ds.PatientName), ds.PatientID, ds.StudyDate, ds.InstitutionName, ds.StudyInstanceUID,
              ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.StudyID]
    assert "CompressedSamples^CT1" in values and "1CT1" in values  # the fixture carries real patient fields
    return [v for v in values if v]


def _files_holding(root: Path, secrets: list[str], skip: Path) -> list[tuple[str, str]]:
    found = []
    for f in root.rglob("*"):
        if f.is_file() and skip not in f.parents:
            blob = f.read_bytes()
            found += [(str(f), s) for s in secrets if s.encode() in blob or s.encode("utf-16-le") in blob]
    return found


def test_ct_small_leaves_no_patient_data(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    write_series(data / "series", 6, spacing=2.5)
    write_series(data / "series2", 6, spacing=2.5)
    secrets = _secrets(data / "series")
    assert _files_holding(data, secrets, skip=tmp_path / "none")  # the search can find them

    image = load_image(data / "series")
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[40:80, 40:80, 1:5] = 1
    aff = image.affine.numpy()
    nib.save(nib.Nifti1Image(mask, aff), str(data / "mask.nii.gz"))
    (data / "manifest.csv").write_text("case_id,patient_id,image,mask,label\n"
                                       "c1,anon1,series,mask.nii.gz,nodule\nc2,anon2,series2,,normal\n")
    cfg = DataConfig(spacing=[1.5, 1.5, 2.5], patch_size=[32, 32, 4], cache="disk",
                     windows=[{"name": "soft", "center": 40, "width": 400}])
    records = manifest_to_records(read_manifest(data / "manifest.csv", vocabulary=cfg.labels), cfg)
    cache = tmp_path / "cache"
    samples = []
    for train in (True, False):
        ds = build_dataset(records, cfg, train=train, cache_dir=cache, seed=0)
        for epoch in (0, 1):
            for batch in build_loader(ds, batch_size=1, shuffle=True, seed=0, epoch=epoch):
                samples.append(batch)
    assert len(list(cache.glob("*.pt"))) == 2  # one entry per scan, shared by training and evaluation
    torch.save([s["image"] for s in samples if not isinstance(s["image"], torch.Tensor)], tmp_path / "x.pt")
    evaluation = build_dataset(records, cfg, train=False, cache_dir=cache)[0]
    torch.save(evaluation, tmp_path / "eval_sample.pt")  # what a user might persist: meta included

    # errors: a single slice where a volume is expected, and a mask on another grid
    nib.save(nib.Nifti1Image(mask, aff @ np.diag([2.0, 1, 1, 1])), str(data / "bad_mask.nii.gz"))
    bad = [dict(records[0], image=str(CT_SMALL), row=3, case_id="c3"),
           dict(records[0], mask=str(data / "bad_mask.nii.gz"), row=4, case_id="c4")]
    messages = []
    for rec in bad:
        with pytest.raises(DataError) as info:
            build_dataset([rec], cfg, train=True, cache_dir=cache)[0]
        messages.append(str(info.value))
    assert "single slice" in messages[0] and "does not match" in messages[1]

    assert _files_holding(tmp_path, secrets, skip=data) == []
    text = caplog.text + "".join(capfd.readouterr()) + "\n".join(messages)
    text += repr(evaluation["image"].meta) + repr(evaluation["mask"].meta)
    for s in secrets:
        assert s not in text


def test_the_search_catches_a_leaking_pipeline(tmp_path: Path) -> None:
    """Positive control: MONAI's PydicomReader with pruning off carries the patient fields into a saved
    tensor, and the byte search above finds them there."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    write_series(tmp_path / "series", 3)
    secrets = _secrets(tmp_path / "series")
    leaky = LoadImage(reader=PydicomReader(prune_metadata=False), image_only=True)(str(tmp_path / "series"))
    (tmp_path / "out").mkdir()
    torch.save(leaky, tmp_path / "out" / "leaky.pt")
    found = {s for _, s in _files_holding(tmp_path / "out", secrets, skip=tmp_path / "series")}
    assert {"CompressedSamples^CT1", "1CT1"} <= found
