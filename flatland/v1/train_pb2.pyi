from flatland.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState

class RunRef(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr", "train_samples", "corrupt_samples", "images_per_s", "seconds", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TOP1_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TOP5_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_TOP1_FIELD_NUMBER: _ClassVar[int]
    VAL_TOP5_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_S_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    train_top1: float
    train_top5: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    train_samples: int
    corrupt_samples: int
    images_per_s: float
    seconds: float
    values: _containers.ScalarMap[str, float]
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., train_top1: _Optional[float] = ..., train_top5: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_top1: _Optional[float] = ..., val_top5: _Optional[float] = ..., lr: _Optional[float] = ..., train_samples: _Optional[int] = ..., corrupt_samples: _Optional[int] = ..., images_per_s: _Optional[float] = ..., seconds: _Optional[float] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TransferResult(_message.Message):
    __slots__ = ("source", "target", "mode", "test_top1", "lr", "weight_decay", "metric", "test_score")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEST_TOP1_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    mode: str
    test_top1: float
    lr: float
    weight_decay: float
    metric: str
    test_score: float
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., mode: _Optional[str] = ..., test_top1: _Optional[float] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., metric: _Optional[str] = ..., test_score: _Optional[float] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("progress", "state", "metrics", "error")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    state: RunState
    metrics: EpochMetrics
    error: _common_pb2.ErrorDetail
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., metrics: _Optional[_Union[EpochMetrics, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "kind", "state", "metrics", "transfer_results", "error", "result")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    kind: str
    state: RunState
    metrics: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    transfer_results: _containers.RepeatedCompositeFieldContainer[TransferResult]
    error: _common_pb2.ErrorDetail
    result: _common_pb2.StoreRef
    def __init__(self, run_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., metrics: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., transfer_results: _Optional[_Iterable[_Union[TransferResult, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ...) -> None: ...
