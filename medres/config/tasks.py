"""Prediction tasks beside the segmentation head: the ``tasks:`` list of a configuration (torch-free).

Each task is one question asked of every scan, read from manifest columns::

    tasks:
      - name: findings
        type: multilabel          # binary | multiclass | multilabel | regression
        columns: [opacity, effusion, cardiomegaly]   # 0/1 cells; -1 uncertain; blank unknown
        uncertain: ignore         # a -1 cell: ignore (unknown) | ones | zeros, or {column: policy}
      - name: ctr
        type: regression
        column: ctr               # a number per cell; blank unknown
        unit: ratio
        loss: huber

Without ``tasks:`` a configuration has today's single classification head from ``data.labels``;
:func:`effective_tasks` gives it in the same shape, so later code reads one list. The checks that need
the whole configuration (names, columns, mask labels) are in :func:`check_tasks`, which the root
``Config`` runs; the cells are checked against the manifest by ``medres.data.tasks``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medres.errors import ConfigError, did_you_mean

__all__ = [
    "TaskConfig", "AnyTask", "BinaryTask", "MulticlassTask", "MultilabelTask", "RegressionTask", "TASK_TYPES",
    "RESERVED_COLUMNS", "ID_COLUMNS", "HEAD_NAMES", "SINGLE_HEAD", "effective_tasks", "check_tasks",
    "uncertain_policy", "TaskSlot", "TaskLayout", "task_layout", "SINGLE_LABEL_TYPES", "mask_scores",
]

#: Manifest columns medres reads for something else (data_manifests/README.md): no task may be named so.
RESERVED_COLUMNS = ("case_id", "patient_id", "study_uid", "series_uid", "image", "mask", "label", "split",
                    "fold", "site", "scanner", "sex", "age", "pixel_spacing", "view")
#: Columns that identify a scan or place it in a split: never a task's target.
ID_COLUMNS = ("case_id", "patient_id", "study_uid", "series_uid", "image", "mask", "split", "fold")
#: The heads' names in reports (``head`` of the long-format records).
HEAD_NAMES = ("classification", "segmentation")
#: The name of the task :func:`effective_tasks` makes of ``data.labels``.
SINGLE_HEAD = "classification"
TASK_TYPES = ("binary", "multiclass", "multilabel", "regression")
#: Task types answered by one softmax over classes; a configuration has at most one of them for now.
SINGLE_LABEL_TYPES = ("binary", "multiclass")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
Uncertain = Literal["ignore", "ones", "zeros"]


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str  # letters, digits, '_', '-', '.'; names the task's outputs and report sections
    weight: float = Field(1.0, ge=0)  # fixed weight of this task's loss (loss.task.mode: fixed)

    def target_columns(self) -> list[str]:
        """The manifest columns this task reads, in order."""
        raise NotImplementedError


class _OneColumn(_Task):
    column: str

    def target_columns(self) -> list[str]:
        return [self.column]


class BinaryTask(_OneColumn):
    """One yes/no question: a 0/1 column (``-1`` uncertain, blank unknown), or two class names."""

    type: Literal["binary"]
    # the two cell values meaning 0 and 1, in that order (e.g. [normal, nodule]); None: 0/1 cells
    classes: list[str] | None = None
    uncertain: Uncertain | dict[str, Uncertain] = "ignore"  # a -1 cell (0/1 cells only)
    loss: Literal["bce", "focal"] = "bce"
    # balanced: n_negative / n_positive on the training fold; none: 1; or {column: weight}
    pos_weight: Literal["balanced", "none"] | dict[str, float] = "none"


class MulticlassTask(_OneColumn):
    """One of several classes per scan: a column of class names (blank unknown)."""

    type: Literal["multiclass"]
    classes: list[str]  # the cell values, in output index order
    loss: Literal["ce", "focal"] = "ce"


class MultilabelTask(_Task):
    """Findings that may co-occur: one 0/1 column each (``-1`` uncertain, blank unknown)."""

    type: Literal["multilabel"]
    columns: list[str]
    uncertain: Uncertain | dict[str, Uncertain] = "ignore"  # one policy, or one per column
    loss: Literal["bce", "focal"] = "bce"
    pos_weight: Literal["balanced", "none"] | dict[str, float] = "none"
    # {column: mask label}: that finding scored from the segmentation head, the logit of the mask label's
    # most confident pixel, instead of its own logit (a small lesion dilutes into globally pooled features)
    from_mask: dict[str, str] = Field(default_factory=dict)

    def target_columns(self) -> list[str]:
        return list(self.columns)


class RegressionTask(_OneColumn):
    """A number per scan (blank unknown); targets are standardised on the training fold."""

    type: Literal["regression"]
    unit: str | None = None  # shown with the values in reports (e.g. mm, ratio)
    loss: Literal["mse", "l1", "huber"] = "mse"
    interval: float = Field(0.9, gt=0, lt=1)  # coverage of the prediction interval (split conformal)


AnyTask = BinaryTask | MulticlassTask | MultilabelTask | RegressionTask
TaskConfig = Annotated[AnyTask, Field(discriminator="type")]


def uncertain_policy(task: AnyTask, column: str) -> str:
    """How a ``-1`` cell of ``column`` is read: ``ignore``, ``ones`` or ``zeros`` (``ignore`` for tasks
    without uncertain cells)."""
    policy = getattr(task, "uncertain", "ignore")
    return policy.get(column, "ignore") if isinstance(policy, dict) else policy


def effective_tasks(cfg: Any) -> list[AnyTask]:
    """The tasks of ``cfg`` (a ``Config``); without ``tasks:``, today's classification head from
    ``data.labels`` as one task named ``classification`` reading the ``label`` column (binary with the classes
    [negative, positive] for two labels, else multiclass; its loss stays ``loss.cls``), and none when
    ``model.cls_head`` is off."""
    if cfg.tasks is not None:
        return list(cfg.tasks)
    if not cfg.model.cls_head:
        return []
    labels = list(cfg.data.labels)
    weight = cfg.loss.task.cls
    if len(labels) == 2:
        positive = cfg.data.positive_label or labels[-1]
        negative = next(x for x in labels if x != positive)
        return [BinaryTask(type="binary", name=SINGLE_HEAD, column="label", classes=[negative, positive],
                           loss="focal" if cfg.loss.cls.type == "focal" else "bce", weight=weight)]
    return [MulticlassTask(type="multiclass", name=SINGLE_HEAD, column="label", classes=labels,
                           loss=cfg.loss.cls.type, weight=weight)]


@dataclass(frozen=True)
class TaskSlot:
    """One task's place in the model's classification output and in a batch's ``targets``.

    Attributes:
        name, type: the task's name and type.
        start, stop: its slice of ``cls_logits`` (binary 2, multiclass K, multilabel one per column,
            regression 1: the standardised value).
        target_start, target_stop: its slice of the ``targets`` tensor (single-label: the class index;
            multilabel: one 0/1 per column; regression: the raw value; NaN unknown).
        classes: the class names (single-label: ``data.labels`` for the single head, else ``classes`` or
            ``("0", "1")`` for 0/1 cells), the columns (multilabel) or ``(column,)`` (regression).
        outputs: the prediction tables' columns for this task (``p_<class>``; ``p_<c>``, ``y_<c>``,
            ``logit_<c>``; ``pred_<t>``, ``y_<t>``, ``pred_<t>_lo``, ``pred_<t>_hi``).
        task: the task's configuration.
    """

    name: str
    type: str
    start: int
    stop: int
    target_start: int
    target_stop: int
    classes: tuple[str, ...]
    outputs: tuple[str, ...]
    task: AnyTask

    @property
    def logits(self) -> slice:
        """The slice of ``cls_logits``."""
        return slice(self.start, self.stop)

    @property
    def targets(self) -> slice:
        """The slice of ``targets``."""
        return slice(self.target_start, self.target_stop)

    @property
    def single_label(self) -> bool:
        return self.type in SINGLE_LABEL_TYPES


@dataclass(frozen=True)
class TaskLayout:
    """The tasks of a configuration in config order, each a slice of one wide classification head
    (:func:`task_layout`). ``single_head``: no ``tasks:`` (today's head from ``data.labels``)."""

    slots: tuple[TaskSlot, ...]
    single_head: bool

    def __iter__(self) -> Iterator[TaskSlot]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, name: str) -> TaskSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def width(self) -> int:
        """Outputs of the classification head (``model.num_classes``)."""
        return self.slots[-1].stop if self.slots else 0

    @property
    def n_targets(self) -> int:
        """Length of a batch item's ``targets``."""
        return self.slots[-1].target_stop if self.slots else 0

    @property
    def target_slices(self) -> dict[str, slice]:
        """Task name -> its slice of ``targets``."""
        return {s.name: s.targets for s in self.slots}

    @property
    def logit_slices(self) -> dict[str, slice]:
        """Task name -> its slice of ``cls_logits``."""
        return {s.name: s.logits for s in self.slots}

    @property
    def single_label(self) -> TaskSlot | None:
        """The binary / multiclass task (the one that fills ``label``), or None."""
        return next((s for s in self.slots if s.single_label), None)


def task_layout(cfg: Any) -> TaskLayout:
    """The :class:`TaskLayout` of ``cfg`` (a ``Config``). Without ``tasks:`` it is the one task of
    :func:`effective_tasks` with width ``len(data.labels)`` and classes ``data.labels`` (empty when
    ``model.cls_head`` is off)."""
    single_head = cfg.tasks is None
    slots: list[TaskSlot] = []
    start = target = 0
    for task in effective_tasks(cfg):
        if single_head:
            classes: tuple[str, ...] = tuple(cfg.data.labels)
        elif isinstance(task, MultilabelTask):
            classes = tuple(task.columns)
        elif isinstance(task, RegressionTask):
            classes = (task.column,)
        else:
            classes = tuple(task.classes) if task.classes is not None else ("0", "1")
        if isinstance(task, MultilabelTask):
            width, n = len(classes), len(classes)
            outputs = tuple(f"{kind}_{c}" for c in classes for kind in ("p", "y", "logit"))
        elif isinstance(task, RegressionTask):
            width, n = 1, 1
            outputs = (f"pred_{task.name}", f"y_{task.name}", f"pred_{task.name}_lo", f"pred_{task.name}_hi")
        else:
            width, n = len(classes), 1
            outputs = tuple(f"p_{c}" for c in classes)
        slots.append(TaskSlot(name=task.name, type=task.type, start=start, stop=start + width,
                              target_start=target, target_stop=target + n, classes=classes, outputs=outputs,
                              task=task))
        start, target = start + width, target + n
    return TaskLayout(slots=tuple(slots), single_head=single_head)


def mask_scores(cfg: Any) -> list[list[int]]:
    """``[[logit, mask class], ...]`` of the multilabel columns that ``from_mask`` scores from the
    segmentation head (the model's ``mask_scores`` option; empty without any)."""
    if cfg.tasks is None:
        return []
    by_name = {name: int(v) for v, name in cfg.data.mask_labels.items()}
    pairs = []
    for slot in task_layout(cfg):
        if isinstance(slot.task, MultilabelTask):
            for col, label in slot.task.from_mask.items():
                pairs.append([slot.start + slot.classes.index(col), by_name[label]])
    return pairs


def _fields(i: int, task: AnyTask) -> Iterator[tuple[str, str]]:
    """(dotted field, column) for each column of task ``i``."""
    if isinstance(task, MultilabelTask):
        for j, c in enumerate(task.columns):
            yield f"tasks.{i}.columns.{j}", c
    else:
        yield f"tasks.{i}.column", task.column


def _check_output_columns(layout: TaskLayout) -> None:
    """Refuse two tasks writing the same prediction-table column (e.g. a multilabel column ``opacity``
    beside a single-label class ``opacity``: two ``p_opacity``)."""
    owner: dict[str, tuple[int, TaskSlot]] = {}
    for i, slot in enumerate(layout):
        extra = ("y_true", "y_pred", "y_pred_argmax") if slot.single_label else ()
        for col in (*slot.outputs, *extra):
            if col in owner and owner[col][1].name != slot.name:
                first = owner[col][1]
                raise ConfigError(f"tasks {first.name!r} ({first.type}) and {slot.name!r} ({slot.type}) both "
                                  f"write the prediction column {col!r}", field=f"tasks.{i}",
                                  hint=f"rename a class of {first.name!r} or a column / name of "
                                  f"{slot.name!r} so that their outputs differ")
            owner.setdefault(col, (i, slot))


def check_tasks(cfg: Any) -> None:
    """Refuse a ``tasks:`` list of ``cfg`` (a ``Config``, which imports this module) that cannot mean
    what it says (no-op without one).

    Raises:
        ConfigError: naming the dotted field, the task and the column, for an empty list; a name that is
        blank, not a plain word, repeated, or that clashes with a reserved manifest column, a head or a
        ``data.mask_labels`` name; an empty or repeated column list; a column that is an id, path or split
        column, or that two tasks read; ``classes`` that are too few or repeated; ``pos_weight`` or
        ``uncertain`` keys that are not the task's columns, or a weight that is not positive; two tasks
        writing the same prediction column (``p_<c>``, ``y_<c>``, ``pred_<t>``, ...).
    """
    tasks = cfg.tasks
    if tasks is None:
        return
    if not tasks:
        raise ConfigError("the tasks list is empty", field="tasks",
                          hint="remove 'tasks:' for the single head from data.labels, or list the tasks")
    d = cfg.data
    if d.image_folder is not None:
        raise ConfigError("tasks read manifest columns, but data.image_folder gives only class folders",
                          field="tasks", hint="write a manifest (data.manifest) with the tasks' columns")
    taken: dict[str, str] = {}  # a reserved word (case-folded) -> what it is
    for c in RESERVED_COLUMNS:
        taken[c.casefold()] = f"the manifest column {c!r}"
    for c in d.image_columns:
        taken[c.casefold()] = f"the image column {c!r}"
    if d.mask_column:
        taken[d.mask_column.casefold()] = f"the mask column {d.mask_column!r}"
    for v in sorted(d.mask_labels):
        taken[d.mask_labels[v].casefold()] = f"the mask label {d.mask_labels[v]!r} (data.mask_labels {v})"
    for h in HEAD_NAMES:
        taken[h] = f"the {h} head"
    structural = {c.casefold() for c in ID_COLUMNS} | {c.casefold() for c in d.image_columns}
    if d.mask_column:
        structural.add(d.mask_column.casefold())

    names: dict[str, int] = {}
    readers: dict[str, tuple[str, str]] = {}  # column -> (task name, field)
    for i, task in enumerate(tasks):
        name = task.name
        where = f"tasks.{i}.name"
        if not name.strip():
            raise ConfigError(f"task {i} has an empty name", field=where, hint="give every task a name")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"task name {name!r} may hold only letters, digits, '_', '-' and '.' (it names "
                              "output columns and report sections)", field=where, hint="e.g. findings, ctr")
        if name.casefold() in names:
            raise ConfigError(f"two tasks are named {name!r} (tasks {names[name.casefold()]} and {i})",
                              field=where, hint="give each task its own name")
        names[name.casefold()] = i
        if name.casefold() in taken or name.startswith("image_"):
            what = taken.get(name.casefold(), "an image column (image_*)")
            raise ConfigError(f"task name {name!r} clashes with {what}", field=where,
                              hint=f"rename the task (e.g. {name}_task); its column may keep its name")
        cols = task.target_columns()
        if isinstance(task, MultilabelTask) and not cols:
            raise ConfigError(f"task {name!r} lists no columns", field=f"tasks.{i}.columns",
                              hint="list the manifest columns holding each finding's 0/1")
        for field, col in _fields(i, task):
            if not col.strip() or col != col.strip():
                raise ConfigError(f"task {name!r}: column {col!r} is empty or has surrounding spaces",
                                  field=field, hint="write the manifest column's header exactly")
            if col.casefold() in structural or col.startswith("image_"):
                raise ConfigError(f"task {name!r}: column {col!r} identifies the scan or its split; it "
                                  "cannot be a target", field=field,
                                  hint="name the column holding the target")
            if col in readers:
                other, first = readers[col]
                reason = (f"column {col!r} is listed twice in task {name!r}" if other == name else
                          f"column {col!r} is read by two tasks: {other!r} ({first}) and {name!r}")
                raise ConfigError(reason, field=field,
                                  hint="each manifest column is the target of one task: remove one")
            readers[col] = (name, field)
        classes = getattr(task, "classes", None)
        binary = isinstance(task, BinaryTask)
        if classes is not None and (len(set(classes)) != len(classes) or len(classes) < 2
                                    or (binary and len(classes) != 2)):
            many = "exactly" if binary else "at least"
            raise ConfigError(f"task {name!r}: classes {classes} must be {many} 2 different names",
                              field=f"tasks.{i}.classes",
                              hint="[negative, positive]" if binary else "each class once, in output order")
        for key in ("pos_weight", "uncertain"):
            given = getattr(task, key, None)
            if not isinstance(given, dict):
                continue
            for col, value in given.items():
                if col not in cols:
                    close = did_you_mean(col, cols)
                    raise ConfigError(f"task {name!r}: {key} names {col!r}, which is not one of its columns "
                                      f"{cols}", field=f"tasks.{i}.{key}.{col}",
                                      hint=f"did you mean {close[0]!r}?" if close else f"use one of {cols}")
                if key == "pos_weight" and not (math.isfinite(value) and value > 0):
                    raise ConfigError(f"task {name!r}: pos_weight of {col!r} is {value}; it must be a "
                                      "positive number", field=f"tasks.{i}.pos_weight.{col}",
                                      hint="e.g. 3.0 counts each positive three times; or 'balanced'")
        if isinstance(task, MultilabelTask) and task.from_mask:
            _check_from_mask(cfg, i, task)
        if isinstance(task, BinaryTask) and task.classes is not None and task.uncertain != "ignore":
            raise ConfigError(f"task {name!r}: uncertain applies to 0/1/-1 cells, but the task reads the "
                              f"class names {task.classes}", field=f"tasks.{i}.uncertain",
                              hint="remove uncertain, or remove classes and write the column as 0/1/-1")
    single = [i for i, t in enumerate(tasks) if t.type in SINGLE_LABEL_TYPES]
    if len(single) > 1:
        names_ = ", ".join(repr(tasks[i].name) for i in single)
        raise ConfigError(f"one binary/multiclass task per configuration for now; tasks {names_} are "
                          "single-label", field=f"tasks.{single[1]}.type",
                          hint="keep one of them, or write the others as one multilabel task of 0/1 columns")
    _check_output_columns(task_layout(cfg))
    if not cfg.model.cls_head:
        raise ConfigError("tasks are answered by the classification head, but model.cls_head is off",
                          field="model.cls_head", hint="set model.cls_head: true, or remove tasks:")


def _check_from_mask(cfg: Any, i: int, task: MultilabelTask) -> None:
    """A ``from_mask`` entry must map one of the task's columns to a foreground ``data.mask_labels`` name,
    with the segmentation head on."""
    labels = {name: v for v, name in cfg.data.mask_labels.items() if int(v) != 0}
    for col, label in task.from_mask.items():
        field = f"tasks.{i}.from_mask.{col}"
        if col not in task.columns:
            close = did_you_mean(col, task.columns)
            raise ConfigError(f"task {task.name!r}: from_mask names {col!r}, which is not one of its columns "
                              f"{task.columns}", field=field,
                              hint=f"did you mean {close[0]!r}?" if close else f"use one of {task.columns}")
        if label not in labels:
            close = did_you_mean(label, list(labels))
            raise ConfigError(f"task {task.name!r}: from_mask scores {col!r} from mask label {label!r}, "
                              f"which is not a foreground label of data.mask_labels {sorted(labels)}",
                              field=field,
                              hint=f"did you mean {close[0]!r}?" if close else "name a foreground mask label")
        if not (cfg.model.seg_head and cfg.model.name.startswith("dual_")):
            raise ConfigError(f"task {task.name!r}: from_mask reads the segmentation head, which "
                              f"{cfg.model.name} has not or which is off", field="model.seg_head",
                              hint="use a dual_* model with model.seg_head: true, or remove from_mask")
