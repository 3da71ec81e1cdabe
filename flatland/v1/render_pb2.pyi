from flatland.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RenderImagesRequest(_message.Message):
    __slots__ = ("mesh_key", "glb", "settings_json", "count", "seed", "class_index", "instance", "records_json", "include_depth")
    MESH_KEY_FIELD_NUMBER: _ClassVar[int]
    GLB_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_JSON_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    mesh_key: str
    glb: bytes
    settings_json: str
    count: int
    seed: int
    class_index: int
    instance: int
    records_json: _containers.RepeatedScalarFieldContainer[str]
    include_depth: bool
    def __init__(self, mesh_key: _Optional[str] = ..., glb: _Optional[bytes] = ..., settings_json: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., class_index: _Optional[int] = ..., instance: _Optional[int] = ..., records_json: _Optional[_Iterable[str]] = ..., include_depth: _Optional[bool] = ...) -> None: ...

class RenderedImage(_message.Message):
    __slots__ = ("rgb_png", "depth_npy", "mask_png", "record_json")
    RGB_PNG_FIELD_NUMBER: _ClassVar[int]
    DEPTH_NPY_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    rgb_png: bytes
    depth_npy: bytes
    mask_png: bytes
    record_json: str
    def __init__(self, rgb_png: _Optional[bytes] = ..., depth_npy: _Optional[bytes] = ..., mask_png: _Optional[bytes] = ..., record_json: _Optional[str] = ...) -> None: ...

class RenderImagesResponse(_message.Message):
    __slots__ = ("images", "gl_renderer")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    GL_RENDERER_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[RenderedImage]
    gl_renderer: str
    def __init__(self, images: _Optional[_Iterable[_Union[RenderedImage, _Mapping]]] = ..., gl_renderer: _Optional[str] = ...) -> None: ...

class RenderDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.ExperimentItem
    def __init__(self, dataset: _Optional[_Union[_common_pb2.ExperimentItem, _Mapping]] = ...) -> None: ...

class RenderDatasetEvent(_message.Message):
    __slots__ = ("progress", "dataset_id", "errors")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    dataset_id: str
    errors: _containers.RepeatedCompositeFieldContainer[_common_pb2.ErrorDetail]
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., dataset_id: _Optional[str] = ..., errors: _Optional[_Iterable[_Union[_common_pb2.ErrorDetail, _Mapping]]] = ...) -> None: ...
