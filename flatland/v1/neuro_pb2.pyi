from flatland.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("scoring", "runs", "benchmarks", "force")
    SCORING_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    scoring: _common_pb2.ExperimentItem
    runs: _containers.RepeatedScalarFieldContainer[str]
    benchmarks: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    def __init__(self, scoring: _Optional[_Union[_common_pb2.ExperimentItem, _Mapping]] = ..., runs: _Optional[_Iterable[str]] = ..., benchmarks: _Optional[_Iterable[str]] = ..., force: _Optional[bool] = ...) -> None: ...

class LayerScore(_message.Message):
    __slots__ = ("region", "layer", "raw", "ceiling", "r_over_ceiling", "r2_over_ceiling", "split_std", "raw_ci_low", "raw_ci_high", "rsa", "brainscore")
    REGION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CEILING_FIELD_NUMBER: _ClassVar[int]
    R_OVER_CEILING_FIELD_NUMBER: _ClassVar[int]
    R2_OVER_CEILING_FIELD_NUMBER: _ClassVar[int]
    SPLIT_STD_FIELD_NUMBER: _ClassVar[int]
    RAW_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    RAW_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    RSA_FIELD_NUMBER: _ClassVar[int]
    BRAINSCORE_FIELD_NUMBER: _ClassVar[int]
    region: str
    layer: str
    raw: float
    ceiling: float
    r_over_ceiling: float
    r2_over_ceiling: float
    split_std: float
    raw_ci_low: float
    raw_ci_high: float
    rsa: float
    brainscore: BrainScore
    def __init__(self, region: _Optional[str] = ..., layer: _Optional[str] = ..., raw: _Optional[float] = ..., ceiling: _Optional[float] = ..., r_over_ceiling: _Optional[float] = ..., r2_over_ceiling: _Optional[float] = ..., split_std: _Optional[float] = ..., raw_ci_low: _Optional[float] = ..., raw_ci_high: _Optional[float] = ..., rsa: _Optional[float] = ..., brainscore: _Optional[_Union[BrainScore, _Mapping]] = ...) -> None: ...

class BrainScore(_message.Message):
    __slots__ = ("raw", "error", "ceiling", "score")
    RAW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CEILING_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    raw: float
    error: float
    ceiling: float
    score: float
    def __init__(self, raw: _Optional[float] = ..., error: _Optional[float] = ..., ceiling: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class BenchmarkScore(_message.Message):
    __slots__ = ("run", "run_id", "benchmark", "skipped", "score_json", "figures", "layers", "best_layers", "normalisation", "synthetic")
    RUN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SCORE_JSON_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BEST_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NORMALISATION_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    run: str
    run_id: str
    benchmark: str
    skipped: bool
    score_json: _common_pb2.StoreRef
    figures: _containers.RepeatedCompositeFieldContainer[_common_pb2.StoreRef]
    layers: _containers.RepeatedCompositeFieldContainer[LayerScore]
    best_layers: _containers.RepeatedScalarFieldContainer[str]
    normalisation: str
    synthetic: bool
    def __init__(self, run: _Optional[str] = ..., run_id: _Optional[str] = ..., benchmark: _Optional[str] = ..., skipped: _Optional[bool] = ..., score_json: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., figures: _Optional[_Iterable[_Union[_common_pb2.StoreRef, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[LayerScore, _Mapping]]] = ..., best_layers: _Optional[_Iterable[str]] = ..., normalisation: _Optional[str] = ..., synthetic: _Optional[bool] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[BenchmarkScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[BenchmarkScore, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.ProgressEvent
    result: ScoreResult
    def __init__(self, progress: _Optional[_Union[_common_pb2.ProgressEvent, _Mapping]] = ..., result: _Optional[_Union[ScoreResult, _Mapping]] = ...) -> None: ...

class CompareModelsRequest(_message.Message):
    __slots__ = ("scoring", "run_a", "run_b", "benchmark", "layers_a", "layers_b", "force")
    SCORING_FIELD_NUMBER: _ClassVar[int]
    RUN_A_FIELD_NUMBER: _ClassVar[int]
    RUN_B_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    LAYERS_A_FIELD_NUMBER: _ClassVar[int]
    LAYERS_B_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    scoring: _common_pb2.ExperimentItem
    run_a: str
    run_b: str
    benchmark: str
    layers_a: _containers.RepeatedScalarFieldContainer[str]
    layers_b: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    def __init__(self, scoring: _Optional[_Union[_common_pb2.ExperimentItem, _Mapping]] = ..., run_a: _Optional[str] = ..., run_b: _Optional[str] = ..., benchmark: _Optional[str] = ..., layers_a: _Optional[_Iterable[str]] = ..., layers_b: _Optional[_Iterable[str]] = ..., force: _Optional[bool] = ...) -> None: ...

class CompareModelsResponse(_message.Message):
    __slots__ = ("layers_a", "layers_b", "similarity", "method", "rdm_metric", "result_json", "figure")
    LAYERS_A_FIELD_NUMBER: _ClassVar[int]
    LAYERS_B_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RDM_METRIC_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    FIGURE_FIELD_NUMBER: _ClassVar[int]
    layers_a: _containers.RepeatedScalarFieldContainer[str]
    layers_b: _containers.RepeatedScalarFieldContainer[str]
    similarity: _containers.RepeatedScalarFieldContainer[float]
    method: str
    rdm_metric: str
    result_json: _common_pb2.StoreRef
    figure: _common_pb2.StoreRef
    def __init__(self, layers_a: _Optional[_Iterable[str]] = ..., layers_b: _Optional[_Iterable[str]] = ..., similarity: _Optional[_Iterable[float]] = ..., method: _Optional[str] = ..., rdm_metric: _Optional[str] = ..., result_json: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ..., figure: _Optional[_Union[_common_pb2.StoreRef, _Mapping]] = ...) -> None: ...
