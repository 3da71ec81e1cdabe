from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreRef(_message.Message):
    __slots__ = ("key", "size", "sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    sha256: str
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("task", "done", "total", "skipped", "message", "finished", "outputs")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    task: str
    done: int
    total: int
    skipped: int
    message: str
    finished: bool
    outputs: _containers.RepeatedCompositeFieldContainer[StoreRef]
    def __init__(self, task: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., skipped: _Optional[int] = ..., message: _Optional[str] = ..., finished: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[StoreRef, _Mapping]]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("item", "code", "message", "field")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    item: str
    code: str
    message: str
    field: str
    def __init__(self, item: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class SpecText(_message.Message):
    __slots__ = ("text", "format")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    format: str
    def __init__(self, text: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ExperimentItem(_message.Message):
    __slots__ = ("spec", "name")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    spec: SpecText
    name: str
    def __init__(self, spec: _Optional[_Union[SpecText, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class SpecSummary(_message.Message):
    __slots__ = ("name", "canonical_json", "spec_hash", "dataset_ids", "run_ids")
    class DatasetIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RunIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    DATASET_IDS_FIELD_NUMBER: _ClassVar[int]
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    canonical_json: str
    spec_hash: str
    dataset_ids: _containers.ScalarMap[str, str]
    run_ids: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., canonical_json: _Optional[str] = ..., spec_hash: _Optional[str] = ..., dataset_ids: _Optional[_Mapping[str, str]] = ..., run_ids: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SchemaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SchemaText(_message.Message):
    __slots__ = ("json_schema",)
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    json_schema: str
    def __init__(self, json_schema: _Optional[str] = ...) -> None: ...
