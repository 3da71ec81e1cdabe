from flatland.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateMeshRequest(_message.Message):
    __slots__ = ("family", "params_json", "seed", "class_index", "instance")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    family: str
    params_json: str
    seed: int
    class_index: int
    instance: int
    def __init__(self, family: _Optional[str] = ..., params_json: _Optional[str] = ..., seed: _Optional[int] = ..., class_index: _Optional[int] = ..., instance: _Optional[int] = ...) -> None: ...

class GenerateMeshResponse(_message.Message):
    __slots__ = ("data", "content_type", "stats_json", "item_seed", "relative_key")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    ITEM_SEED_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    stats_json: str
    item_seed: int
    relative_key: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., stats_json: _Optional[str] = ..., item_seed: _Optional[int] = ..., relative_key: _Optional[str] = ...) -> None: ...

class GenerateDatasetRequest(_message.Message):
    __slots__ = ("dataset", "shard_index", "shard_count")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.ExperimentItem
    shard_index: int
    shard_count: int
    def __init__(self, dataset: _Optional[_Union[_common_pb2.ExperimentItem, _Mapping]] = ..., shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ...) -> None: ...

class GenerateDatasetEvent(_message.Message):
    __slots__ = ("progress", "dataset_id", "class_index")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    dataset_id: str
    class_index: int
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., dataset_id: _Optional[str] = ..., class_index: _Optional[int] = ...) -> None: ...

class FitMeshRequest(_message.Message):
    __slots__ = ("mesh", "mesh_format", "masks_png", "records_json", "params_json", "store_outputs")
    MESH_FIELD_NUMBER: _ClassVar[int]
    MESH_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MASKS_PNG_FIELD_NUMBER: _ClassVar[int]
    RECORDS_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    STORE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    mesh: bytes
    mesh_format: str
    masks_png: _containers.RepeatedScalarFieldContainer[bytes]
    records_json: str
    params_json: str
    store_outputs: bool
    def __init__(self, mesh: _Optional[bytes] = ..., mesh_format: _Optional[str] = ..., masks_png: _Optional[_Iterable[bytes]] = ..., records_json: _Optional[str] = ..., params_json: _Optional[str] = ..., store_outputs: _Optional[bool] = ...) -> None: ...

class FitMeshEvent(_message.Message):
    __slots__ = ("progress", "fit_id", "losses_json", "mesh_glb", "metrics_json")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    LOSSES_JSON_FIELD_NUMBER: _ClassVar[int]
    MESH_GLB_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    fit_id: str
    losses_json: str
    mesh_glb: bytes
    metrics_json: str
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., fit_id: _Optional[str] = ..., losses_json: _Optional[str] = ..., mesh_glb: _Optional[bytes] = ..., metrics_json: _Optional[str] = ...) -> None: ...
