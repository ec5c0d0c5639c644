"""The configuration schema: pydantic models of the YAML files in ``configs/`` (torch-free).

Field names are the contract other modules build on: add fields, do not rename them.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from medres.config.tasks import TaskConfig, check_tasks, task_layout

__all__ = [
    "DEFAULT_CT_WINDOWS", "ct_windows", "input_channels",
    "WindowConfig", "AugmentConfig", "DemoConfig", "IndexConfig", "RadiographConfig", "DataConfig",
    "PretrainedConfig",
    "ModelConfig",
    "ClsLossConfig", "SegLossConfig", "TaskWeightConfig", "LossConfig", "OptimConfig", "ScheduleConfig",
    "EarlyStoppingConfig", "TrainConfig", "CVConfig", "EvalConfig", "OutputConfig", "Config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WindowConfig(_Section):
    """A CT intensity window in HU, mapped to one input channel in [0, 1]."""

    name: str
    center: float
    width: float = Field(gt=0)


class AugmentConfig(_Section):
    """Training augmentation; every draw comes from the run's seed, so runs are reproducible."""

    enabled: bool = True
    flip_prob: float = Field(0.5, ge=0, le=1)
    flip_axes: list[int] | None = None  # None: all spatial axes
    affine_prob: float = Field(0.3, ge=0, le=1)
    rotate_deg: float = Field(10.0, ge=0)
    scale: float = Field(0.1, ge=0)  # +/- relative zoom
    intensity_prob: float = Field(0.3, ge=0, le=1)
    intensity_shift: float = Field(0.05, ge=0)  # in normalized units
    intensity_scale: float = Field(0.05, ge=0)
    noise_std: float = Field(0.0, ge=0)
    # 2D natural-image recipe (ImageNet-style). true: random-resized crop (scale 0.08-1, Szegedy et al.
    # 2015); "auto": that for patches of at least 64 px a side, and for smaller (CIFAR-sized) images the
    # pad-and-crop of He et al. 2016 sec. 4.2 (pad patch/8 px, random patch-size crop; the whole image at
    # evaluation); see medres.data.pipeline.transforms.natural_crop
    random_resized_crop: bool | Literal["auto"] = False


class DemoConfig(_Section):
    """The built-in synthetic chest-CT cohort, generated on first use if ``out`` does not hold it."""

    out: str = "demo_data/ct_chest"
    n_patients: int = Field(100, ge=4)
    seed: int = 0
    # (radiographs) cxr: the chest X-ray demo cohort; cxr_findings: it with effusion, cardiomegaly and ctr
    kind: Literal["ct_chest", "cxr", "cxr_findings"] = "ct_chest"
    # --- full-resolution demo grid ---
    grid: Literal["coarse", "fullres"] = "coarse"  # fullres: 0.7-0.9 mm pixels, 1.25-2 mm slices
    grid_scale: float = Field(1.0, gt=0)  # voxels this many times larger, same field (quick tests)
    workers: int = Field(1, ge=0)  # processes rendering scans; 0 = one per CPU core (at most 16)


# --- radiographs: projection radiographs, data.modality XR --------------------------------------------
class RadiographConfig(_Section):
    """How CR/DX radiographs are read (``medres.data.readers.radiograph``; used when ``data.modality`` is
    XR)."""

    voi: int | str | None = None  # which VOI window/LUT: index (0 = first) or its explanation; None: first
    allow_for_processing: bool = False  # FOR PROCESSING (raw detector) images are refused unless true
    views: list[str] | None = None  # ViewPosition / manifest `view` values kept (e.g. [PA, AP]); None: all
# --- end radiographs ---------------------------------------------------------------------------------


# --- data.index: choosing series from a hospital export (python -m medres.data.index) ---------------
class IndexConfig(_Section):
    """Rules for ``python -m medres.data.index``: which series of an export become manifest rows."""

    modalities: list[str] = Field(default_factory=lambda: ["CT"])  # empty: any modality
    orientations: list[Literal["axial", "coronal", "sagittal", "oblique"]] = Field(
        default_factory=lambda: ["axial"])  # empty: any
    oblique_deg: float = Field(10.0, gt=0, lt=45)  # slice normal further than this from an axis: oblique
    original_only: bool = True  # ImageType ORIGINAL (not DERIVED reformats / MIPs)
    exclude_localizers: bool = True  # ImageType LOCALIZER (scouts, topograms)
    require_regular: bool = True  # no missing/duplicate slices, even spacing (as the series reader needs)
    min_slices: int = Field(30, ge=1)
    per_study: Literal["one", "all"] = "one"  # one: the thinnest regular reconstruction (then most slices)
    views: list[str] | None = None  # (radiographs) ViewPosition values kept; None: all, "" always kept
    labels_key: Literal["AccessionNumber", "PatientID", "StudyInstanceUID"] = "AccessionNumber"
    label_columns: list[str] = Field(default_factory=lambda: ["label"])  # copied from the labels file
    annotation_names: dict[str, str] = Field(default_factory=dict)  # ROI/segment name pattern (fnmatch
    # wildcards, case-insensitive) -> a data.mask_labels name; unmatched names are reported, not guessed
    empty_annotations: Literal["negative", "skip"] = "negative"  # an object whose mapped segments/ROIs are
    # all empty: an annotated negative (all-zero mask, said so in index.csv) or skip the series
    key_file: str | None = None  # project key for the pseudonyms (default ~/.config/medres/project.key;
    # the MEDRES_PROJECT_KEY environment variable wins); generated on first use, never written to outputs
    workers: int = Field(0, ge=0)  # header-reading processes (0: one per CPU, at most 8)
    link: Literal["symlink", "hardlink", "copy"] = "symlink"  # how DIR/series/<case>/ holds the files
# --- end data.index --------------------------------------------------------------------------------


class DataConfig(_Section):
    manifest: str | None = None  # CSV; relative paths are relative to the config file's folder
    demo: DemoConfig | None = None  # used when manifest is None
    image_folder: str | None = None  # 2D: a folder of class subfolders of PNG/JPEG images (ImageNet style)
    root: str | None = None  # data root; paths may not escape it (default: the manifest's folder)
    # absolute folders outside the data root that symbolic links in it may lead into (e.g. a DICOM export)
    link_roots: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=lambda: ["normal", "nodule"])  # class vocabulary, index order
    positive_label: str | None = None  # binary reports: the positive class (default: labels[-1])
    mask_labels: dict[int, str] = Field(default_factory=lambda: {0: "background", 1: "nodule"})
    image_columns: list[str] = Field(default_factory=lambda: ["image"])  # several = input channels
    mask_column: str | None = "mask"
    spatial_dims: Literal[2, 3] = 3
    modality: Literal["CT", "MR", "natural", "XR"] = "CT"  # XR: projection radiographs (CR/DX/PNG)
    windows: list[WindowConfig] = Field(default_factory=list)  # CT: one channel per window
    normalize: Literal["window", "zscore", "imagenet", "none"] = "window"
    orientation: str | None = "RAS"
    spacing: list[float] | None = None  # target spacing in mm (None: keep)
    patch_size: list[int] = Field(default_factory=lambda: [48, 48, 48])
    pos_fraction: float = Field(0.5, ge=0, le=1)  # share of crops centred on mask foreground
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # mmap: the disk cache as memory-mapped .npy files (float16 / uint8; medres.data.pipeline.disk_cache)
    cache: Literal["memory", "disk", "mmap", "none"] = "memory"
    cache_dir: str | None = None  # disk cache folder (default: <output.dir>/.cache)
    num_workers: int = Field(0, ge=0)
    # --- hostile input: begin -----------------------------------------------------------------------
    # scans whose header declares more voxels are refused before decompressing (never more than the
    # memory free at load time either; medres.data.readers.limits)
    max_voxels: int = Field(2**31, ge=1)
    # a DICOM series folder with more entries is refused before any file in it is read
    max_files_per_series: int = Field(100_000, ge=1)

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: list[float] | None) -> list[float] | None:
        """A voxel size of 0 or below (or not finite) would divide by zero or mirror the scan."""
        if value is not None and not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError(f"every spacing must be a positive number of mm, got {value}")
        return value

    @field_validator("link_roots")
    @classmethod
    def _absolute_link_roots(cls, value: list[str]) -> list[str]:
        """Trusted link targets are named exactly: absolute folders, never the whole file system."""
        for folder in value:
            if not os.path.isabs(os.path.expanduser(folder)):
                raise ValueError(f"{folder!r} is not an absolute path: name each folder in full")
            if os.path.realpath(os.path.expanduser(folder)) == os.path.realpath(os.sep):
                raise ValueError("'/' would let links lead anywhere: name the folder they point into")
        return [os.path.expanduser(f) for f in value]

    @field_validator("patch_size")
    @classmethod
    def _positive_patch(cls, value: list[int]) -> list[int]:
        """A patch side of 0 or below cannot be cropped (MONAI would read -1 as 'the whole image')."""
        if not value or not all(v >= 1 for v in value):
            raise ValueError(f"every patch side must be at least 1 voxel, got {value}")
        return value
    # --- hostile input: end -------------------------------------------------------------------------
    index: IndexConfig = Field(default_factory=IndexConfig)  # python -m medres.data.index
    radiograph: RadiographConfig = Field(default_factory=RadiographConfig)  # (radiographs) modality XR

    @model_validator(mode="after")
    def _radiograph_index_defaults(self) -> DataConfig:
        """``modality: XR``: the index rules' defaults for projection radiographs (one image per row, any
        ImageType: a DX FOR PRESENTATION image is DERIVED; the views of ``data.radiograph.views``);
        ``data.index`` fields the configuration sets are kept."""
        if self.modality == "XR":
            xr = {"modalities": ["CR", "DX"], "orientations": [], "original_only": False,
                  "exclude_localizers": False, "min_slices": 1, "per_study": "all",
                  "views": self.radiograph.views}
            for key, value in xr.items():
                if key not in self.index.model_fields_set:
                    setattr(self.index, key, value)
        return self
    # --- input pipeline for a GPU (medres.training.device_input) ---
    prefetch_factor: int | None = Field(None, ge=1)  # batches each worker loads ahead (torch default 2)
    # keep the worker processes (and what they have loaded) from one epoch to the next
    persistent_workers: bool = True
    # training patches cut from each loaded volume per epoch (MONAI's num_samples): an epoch then visits
    # every scan once and yields patches_per_volume x scans samples; train.batch_size counts patches
    patches_per_volume: int = Field(1, ge=1)
    # random flips / affine on the training device after the copy (batched), not in the workers
    augment_on_device: bool = False

    def positive_index(self) -> int:
        """The report's positive class, an index into ``labels``: ``positive_label``, else the last label."""
        if not self.positive_label:
            return len(self.labels) - 1
        if self.positive_label not in self.labels:
            from medres.errors import ConfigError

            raise ConfigError(f"data.positive_label {self.positive_label!r} is not one of data.labels "
                              f"{list(self.labels)}", field="data.positive_label",
                              hint="set data.positive_label to one of the class names")
        return self.labels.index(self.positive_label)


class PretrainedConfig(_Section):
    path: str
    source: Literal["torchvision", "medicalnet", "medres"] = "torchvision"


class ModelConfig(_Section):
    name: str = "dual_resnet18"
    spatial_dims: Literal[2, 3] | None = None  # default: data.spatial_dims
    in_channels: int | None = Field(None, ge=1)  # default: from data (windows / image columns)
    num_classes: int | None = Field(None, ge=1)  # default: len(data.labels)
    seg_classes: int | None = Field(None, ge=1)  # default: len(data.mask_labels)
    cls_head: bool = True
    seg_head: bool = True
    # passed to create_model (base_channels, norm, ...)
    options: dict[str, object] = Field(default_factory=dict)
    pretrained: PretrainedConfig | None = None


class ClsLossConfig(_Section):
    type: Literal["ce", "focal"] = "ce"
    # balanced: inverse frequency w_c = N / (K n_c) on the training fold; or one weight per class
    weights: Literal["balanced"] | list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)
    balanced_sampler: bool = False


class SegLossConfig(_Section):
    type: Literal["dice_ce"] = "dice_ce"
    class_weights: list[float] | None = None
    include_background: bool = False
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    # a scan without a mask file: "background" = its all-zero mask is the truth (nothing to segment);
    # "skip" = left out of the segmentation loss (the batch must then carry a `has_mask` flag)
    missing_mask: Literal["background", "skip"] = "background"
    batch_dice: bool = True  # Dice summed over the batch before dividing (stable with many empty masks)


class TaskWeightConfig(_Section):
    """How the two heads' losses combine: fixed weights, a warm-up of the classification weight,
    or learned uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018). With ``tasks:`` each task's
    own ``weight`` takes the place of ``cls``, and ``uncertainty`` learns one s_i per task."""

    mode: Literal["fixed", "warmup", "uncertainty"] = "fixed"
    cls: float = Field(1.0, ge=0)
    seg: float = Field(1.0, ge=0)
    warmup_epochs: int = Field(0, ge=0)  # warmup: the cls weight ramps linearly from 0 to `cls`
    init_log_var: float = 0.0  # uncertainty: initial s_i = log sigma_i^2 of both tasks


class LossConfig(_Section):
    cls: ClsLossConfig = Field(default_factory=ClsLossConfig)
    seg: SegLossConfig = Field(default_factory=SegLossConfig)
    task: TaskWeightConfig = Field(default_factory=TaskWeightConfig)


class OptimConfig(_Section):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    # (bag of tricks) lr is stated for this total batch and scaled linearly to the actual one
    # (batch_size x accumulate x processes; Goyal et al. 2017, He et al. 2018); None: lr is used as is.
    # The scaled value is logged and saved in the run's config.yaml as lr_scaled.
    reference_batch_size: int | None = Field(None, ge=1)
    lr_scaled: float | None = Field(None, gt=0)  # filled in by the run; not to be set by hand
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)  # AdamW
    decay_norm_and_bias: bool = False  # False: no weight decay on norm layers, biases, learned task weights


class ScheduleConfig(_Section):
    name: Literal["none", "step", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(30, ge=1)  # epochs, for step
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)


class EarlyStoppingConfig(_Section):
    monitor: str = "val_auroc"
    mode: Literal["max", "min"] = "max"
    patience: int | None = None  # None: no early stopping; the best checkpoint still follows `monitor`


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    accumulate: int = Field(1, ge=1)
    clip_grad_norm: float | None = None
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16_if_native"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    pin_memory: bool | Literal["auto"] = "auto"
    device: str = "auto"
    checkpoint_every_steps: int | None = None
    # --- GPU fast paths (medres.training.compute). Defaults on a GPU are unmeasured. ---
    cudnn_benchmark: bool | Literal["auto"] = "auto"  # auto: on with CUDA (fixed patch shapes)
    fused_optimizer: bool | Literal["auto"] = "auto"  # auto: fused AdamW/SGD kernels with CUDA
    # torch.compile's mode when train.compile is on; reduce-overhead = CUDA graphs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    val_every: int = Field(1, ge=1)


#: Manifest column names that hold DICOM dates: pseudonymisation shifts or removes them, so they never
#: order a temporal validation (``cv.time_column``).
DICOM_DATE_COLUMNS = frozenset(
    name.lower() for name in (
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime",
        "InstanceCreationDate", "PatientBirthDate", "study_date", "series_date", "acquisition_date",
        "content_date", "birth_date", "patient_birth_date"))


class CVConfig(_Section):
    """How patients are split into folds.

    ``strategy``: ``patient`` (stratified patient folds, ``folds`` of them); ``leave_group_out`` (each
    fold holds out every patient of one value of the manifest column ``group_column``: as many folds as
    values, ``folds`` is replaced by that number); ``temporal`` (expanding window on the manifest column
    ``time_column``, a year or ISO date the user provides: fold k trains on patients first scanned
    before ``temporal_cutoffs[k]`` and holds out those first scanned from it until the next cutoff;
    ``folds`` is replaced by the number of cutoffs).
    """

    folds: int = Field(5, ge=1)  # patient: at least 2; other strategies: set from the data
    seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1)  # validation subset of each training fold, by patient
    folds_file: str | None = None  # an edited folds.csv (patient_id, fold) to use instead of drawing folds
    strategy: Literal["patient", "leave_group_out", "temporal"] = "patient"
    group_column: str = "site"  # leave_group_out: the manifest column whose values are held out in turn
    time_column: str | None = None  # temporal: a year (2019) or ISO date (2019-05-03) column, never DICOM's
    temporal_cutoffs: list[int | str] = Field(default_factory=list)  # temporal: increasing years or dates

    @field_validator("temporal_cutoffs")
    @classmethod
    def _cutoffs(cls, value: list[int | str]) -> list[int | str]:
        import datetime

        keys = []
        for c in value:
            text = str(c).strip()
            try:
                keys.append(datetime.date(int(text), 1, 1) if text.isdigit() and len(text) == 4
                            else datetime.date.fromisoformat(text))
            except ValueError:
                raise ValueError(f"temporal cutoff {c!r} is neither a year (2019) nor an ISO date "
                                 "(2019-07-01)") from None
        if any(b <= a for a, b in zip(keys, keys[1:])):
            raise ValueError(f"temporal_cutoffs {list(value)} must increase strictly")
        return value

    @model_validator(mode="after")
    def _strategy(self) -> CVConfig:
        if self.strategy == "patient" and self.folds < 2:
            raise ValueError(f"cv.folds={self.folds}: patient cross-validation needs at least 2 folds")
        if self.strategy == "temporal":
            if not self.time_column or not self.time_column.strip():
                raise ValueError("cv.strategy temporal needs cv.time_column: a manifest column with each "
                                 "scan's year or ISO date")
            if self.time_column.strip().lower() in DICOM_DATE_COLUMNS:
                raise ValueError(f"cv.time_column {self.time_column!r} looks like a DICOM date, which "
                                 "pseudonymisation shifts or removes: give a year or date column you provide")
            if not self.temporal_cutoffs:
                raise ValueError("cv.strategy temporal needs cv.temporal_cutoffs, e.g. [2019, 2020]")
        if self.strategy == "leave_group_out" and not self.group_column.strip():
            raise ValueError("cv.strategy leave_group_out needs cv.group_column (e.g. site)")
        return self


class EvalConfig(_Section):
    bootstrap_resamples: int = Field(2000, ge=100)
    ci_level: float = Field(0.95, gt=0, lt=1)
    threshold: Literal["youden", "sensitivity", "specificity", "cost"] = "youden"
    threshold_target: float = 0.9
    subgroups: list[str] = Field(default_factory=lambda: ["site", "scanner", "sex", "age_band"])
    min_positives: int = Field(5, ge=1)
    nsd_tolerance_mm: float = Field(2.0, gt=0)
    sliding_window_overlap: float = Field(0.25, ge=0, lt=1)
    tta_flips: bool = False
    # a case's class probabilities from its sliding windows: max = the most abnormal window (a focal
    # finding that one window sees); mean = softmax of the mean window logit (diffuse findings)
    cls_aggregate: Literal["max", "mean"] = "max"
    # --- calibration: recalibration map fitted per fold on its inner validation only,
    # saved in the fold's checkpoint and applied to its held-out, test and new cases ---
    calibration: Literal["temperature", "platt", "none"] = "temperature"
    # external test sites (split=test, a cv.group_column value absent from development): the share of each
    # site's patients used to refit the intercept (recalibration-in-the-large); 0 turns it off
    external_recalibration_fraction: float = Field(0.2, ge=0, lt=1)
    # conformal prediction sets, fitted per fold on its inner validation (medres.metrics.conformal):
    # error rate alpha (sets hold the true class with probability >= 1 - alpha; null turns them off),
    # the score (lac: 1 - p_y; aps: adaptive sets) and one threshold per true class (mondrian)
    conformal_alpha: float | None = Field(0.1, gt=0, lt=1)
    conformal_score: Literal["lac", "aps"] = "lac"
    conformal_mondrian: bool = False
    # --compare: the threshold probabilities at which the runs' net benefits are compared
    net_benefit_thresholds: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3])

    @field_validator("net_benefit_thresholds")
    @classmethod
    def _probabilities(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not 0 < t < 1]
        if bad:
            raise ValueError(f"net benefit thresholds {bad} are not probabilities strictly between 0 and 1")
        return value


class OutputConfig(_Section):
    dir: str = "runs"
    name: str = "run"  # the run folder's name under dir: one path component
    # per-epoch metrics mirrored to these when installed (metrics.csv is always written); [] turns them off
    tracking: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard", "mlflow"])

    @field_validator("name")
    @classmethod
    def _one_component(cls, value: str) -> str:
        bad = [c for c in ("/", "\\", "\0") if c in value]
        if value.strip() in ("", ".", "..") or bad:
            why = f"holds {bad[0]!r}" if bad else "is empty" if not value.strip() else f"is {value.strip()!r}"
            raise ValueError(f"the run name {why}: it must be one folder name (no '/', '\\', '..'), "
                             "the run folder is output.dir/output.name")
        return value


#: Used when a CT configuration with ``normalize: window`` lists no windows: -1000..400 HU, one channel.
DEFAULT_CT_WINDOWS = ((-300.0, 1400.0),)


def ct_windows(d: DataConfig) -> list[tuple[float, float]]:
    """The configured ``(center, width)`` windows in HU, or :data:`DEFAULT_CT_WINDOWS`."""
    return [(w.center, w.width) for w in d.windows] or [tuple(w) for w in DEFAULT_CT_WINDOWS]


def input_channels(d: DataConfig) -> int:
    """The one rule for the number of channels the data pipeline gives the model (``model.in_channels``
    follows it; ``medres.data.pipeline.transforms`` builds exactly these): one per image column, times the CT
    windows when CT is windowed (``normalize: window``); 3 for ImageNet-normalized natural images."""
    if d.modality == "natural" and d.normalize == "imagenet":
        return 3
    n = len(d.image_columns)
    if d.modality == "CT" and d.normalize == "window":
        n *= len(ct_windows(d))
    return n


class Config(_Section):
    """The whole configuration. Build it with ``load_config``, which also fills the derived defaults
    (``resolved()``), resolves relative input paths and checks cross-field consistency."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    # prediction tasks beside the segmentation head (medres.config.tasks); None: the single head from
    # data.labels. Left out of dumps and hashes when None, so configurations without it read as before.
    tasks: list[TaskConfig] | None = None

    # where it came from (not part of the dump or the hash)
    _source: str | None = PrivateAttr(default=None)
    _original_paths: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _tasks_consistent(self) -> Config:
        """Task names and columns against each other and the data section (``check_tasks``)."""
        check_tasks(self)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if self.tasks is None:
            out.pop("tasks", None)
        return out

    @property
    def source(self) -> str | None:
        """The configuration file this was read from, or None."""
        return self._source

    @property
    def original_paths(self) -> dict[str, str]:
        """Input paths as written (dotted field -> text), before resolution; for display."""
        return dict(self._original_paths)

    def resolved(self) -> Config:
        """A copy with the derived model defaults filled in (idempotent):

        - ``model.spatial_dims`` <- ``data.spatial_dims``
        - ``model.num_classes`` <- ``len(data.labels)`` (with ``tasks:``, the task layout's width)
        - ``model.seg_classes`` <- ``len(data.mask_labels)``
        - ``model.in_channels`` <- :func:`input_channels` (what the data pipeline makes)
        """
        d, m = self.data, self.model
        channels = input_channels(d)
        model = m.model_copy(update={
            "spatial_dims": m.spatial_dims if m.spatial_dims is not None else d.spatial_dims,
            "num_classes": m.num_classes if m.num_classes is not None else (
                task_layout(self).width if self.tasks is not None else len(d.labels)),
            "seg_classes": m.seg_classes if m.seg_classes is not None else len(d.mask_labels),
            "in_channels": m.in_channels if m.in_channels is not None else channels,
        })
        out = self.model_copy(update={"model": model})
        out._source, out._original_paths = self._source, dict(self._original_paths)
        return out

