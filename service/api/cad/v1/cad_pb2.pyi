from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    TRUE_POSITIVE: _ClassVar[Verdict]
    FALSE_POSITIVE: _ClassVar[Verdict]

class LabelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_STATE_UNSPECIFIED: _ClassVar[LabelState]
    UNLABELED: _ClassVar[LabelState]
    POSITIVE: _ClassVar[LabelState]
    NEGATIVE: _ClassVar[LabelState]
VERDICT_UNSPECIFIED: Verdict
TRUE_POSITIVE: Verdict
FALSE_POSITIVE: Verdict
LABEL_STATE_UNSPECIFIED: LabelState
UNLABELED: LabelState
POSITIVE: LabelState
NEGATIVE: LabelState

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("client_id", "box")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    box: Box
    def __init__(self, client_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "pixel_type", "pixels")
    class PixelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PIXEL_TYPE_UNSPECIFIED: _ClassVar[RawImage.PixelType]
        UINT8: _ClassVar[RawImage.PixelType]
        UINT16: _ClassVar[RawImage.PixelType]
    PIXEL_TYPE_UNSPECIFIED: RawImage.PixelType
    UINT8: RawImage.PixelType
    UINT16: RawImage.PixelType
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    pixel_type: RawImage.PixelType
    pixels: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., pixel_type: _Optional[_Union[RawImage.PixelType, str]] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("center", "width")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    center: float
    width: float
    def __init__(self, center: _Optional[float] = ..., width: _Optional[float] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("dicom", "encoded", "raw", "frame_index", "candidates", "recipe", "window", "source_id", "idempotency_key")
    DICOM_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    dicom: bytes
    encoded: bytes
    raw: RawImage
    frame_index: int
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    recipe: str
    window: Window
    source_id: str
    idempotency_key: str
    def __init__(self, dicom: _Optional[bytes] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., frame_index: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., recipe: _Optional[str] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., source_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CandidateResult(_message.Message):
    __slots__ = ("candidate_id", "client_id", "probability", "patches", "entropy", "diversity", "score")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    client_id: str
    probability: float
    patches: int
    entropy: float
    diversity: float
    score: float
    def __init__(self, candidate_id: _Optional[str] = ..., client_id: _Optional[str] = ..., probability: _Optional[float] = ..., patches: _Optional[int] = ..., entropy: _Optional[float] = ..., diversity: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("request_id", "model_version", "frame_index", "results", "recipe", "image_height", "image_width")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_version: str
    frame_index: int
    results: _containers.RepeatedCompositeFieldContainer[CandidateResult]
    recipe: str
    image_height: int
    image_width: int
    def __init__(self, request_id: _Optional[str] = ..., model_version: _Optional[str] = ..., frame_index: _Optional[int] = ..., results: _Optional[_Iterable[_Union[CandidateResult, _Mapping]]] = ..., recipe: _Optional[str] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ...) -> None: ...

class Point3D(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class VolumeCandidate(_message.Message):
    __slots__ = ("client_id", "patient_mm", "voxel", "vessel_direction")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_MM_FIELD_NUMBER: _ClassVar[int]
    VOXEL_FIELD_NUMBER: _ClassVar[int]
    VESSEL_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    patient_mm: Point3D
    voxel: Point3D
    vessel_direction: Point3D
    def __init__(self, client_id: _Optional[str] = ..., patient_mm: _Optional[_Union[Point3D, _Mapping]] = ..., voxel: _Optional[_Union[Point3D, _Mapping]] = ..., vessel_direction: _Optional[_Union[Point3D, _Mapping]] = ...) -> None: ...

class VolumeHeader(_message.Message):
    __slots__ = ("candidates", "recipe", "window", "source_id")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[VolumeCandidate]
    recipe: str
    window: Window
    source_id: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[VolumeCandidate, _Mapping]]] = ..., recipe: _Optional[str] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., source_id: _Optional[str] = ...) -> None: ...

class VolumeChunk(_message.Message):
    __slots__ = ("header", "instances")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    header: VolumeHeader
    instances: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, header: _Optional[_Union[VolumeHeader, _Mapping]] = ..., instances: _Optional[_Iterable[bytes]] = ...) -> None: ...

class VolumeResult(_message.Message):
    __slots__ = ("candidate_id", "client_id", "probability", "patches", "entropy", "diversity", "score", "patient_mm", "voxel", "vessel_direction", "direction_estimated", "direction_scale_mm")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_MM_FIELD_NUMBER: _ClassVar[int]
    VOXEL_FIELD_NUMBER: _ClassVar[int]
    VESSEL_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_SCALE_MM_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    client_id: str
    probability: float
    patches: int
    entropy: float
    diversity: float
    score: float
    patient_mm: Point3D
    voxel: Point3D
    vessel_direction: Point3D
    direction_estimated: bool
    direction_scale_mm: float
    def __init__(self, candidate_id: _Optional[str] = ..., client_id: _Optional[str] = ..., probability: _Optional[float] = ..., patches: _Optional[int] = ..., entropy: _Optional[float] = ..., diversity: _Optional[float] = ..., score: _Optional[float] = ..., patient_mm: _Optional[_Union[Point3D, _Mapping]] = ..., voxel: _Optional[_Union[Point3D, _Mapping]] = ..., vessel_direction: _Optional[_Union[Point3D, _Mapping]] = ..., direction_estimated: _Optional[bool] = ..., direction_scale_mm: _Optional[float] = ...) -> None: ...

class ClassifyVolumeResponse(_message.Message):
    __slots__ = ("request_id", "model_version", "recipe", "results", "slices", "rows", "columns", "spacing_mm")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_version: str
    recipe: str
    results: _containers.RepeatedCompositeFieldContainer[VolumeResult]
    slices: int
    rows: int
    columns: int
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, request_id: _Optional[str] = ..., model_version: _Optional[str] = ..., recipe: _Optional[str] = ..., results: _Optional[_Iterable[_Union[VolumeResult, _Mapping]]] = ..., slices: _Optional[int] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., spacing_mm: _Optional[_Iterable[float]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "version", "manifest_json", "execution_provider", "input_size", "default_recipe")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RECIPE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    manifest_json: str
    execution_provider: str
    input_size: int
    default_recipe: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., manifest_json: _Optional[str] = ..., execution_provider: _Optional[str] = ..., input_size: _Optional[int] = ..., default_recipe: _Optional[str] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("candidate_id", "verdict", "reviewer", "idempotency_key", "note")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    verdict: Verdict
    reviewer: str
    idempotency_key: str
    note: str
    def __init__(self, candidate_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reviewer: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class MissedFinding(_message.Message):
    __slots__ = ("request_id", "box", "reviewer", "idempotency_key", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    box: Box
    reviewer: str
    idempotency_key: str
    note: str
    def __init__(self, request_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., reviewer: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class CorrectionReceipt(_message.Message):
    __slots__ = ("event_id", "candidate_id", "label_before", "label", "conflict", "replayed", "created", "notices")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    candidate_id: str
    label_before: LabelState
    label: LabelState
    conflict: bool
    replayed: bool
    created: str
    notices: _containers.RepeatedCompositeFieldContainer[ConflictNotice]
    def __init__(self, event_id: _Optional[str] = ..., candidate_id: _Optional[str] = ..., label_before: _Optional[_Union[LabelState, str]] = ..., label: _Optional[_Union[LabelState, str]] = ..., conflict: _Optional[bool] = ..., replayed: _Optional[bool] = ..., created: _Optional[str] = ..., notices: _Optional[_Iterable[_Union[ConflictNotice, _Mapping]]] = ...) -> None: ...

class ConflictNotice(_message.Message):
    __slots__ = ("candidate_id", "request_id", "your_label", "other_reviewer", "their_label", "created")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    YOUR_LABEL_FIELD_NUMBER: _ClassVar[int]
    OTHER_REVIEWER_FIELD_NUMBER: _ClassVar[int]
    THEIR_LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    request_id: str
    your_label: LabelState
    other_reviewer: str
    their_label: LabelState
    created: str
    def __init__(self, candidate_id: _Optional[str] = ..., request_id: _Optional[str] = ..., your_label: _Optional[_Union[LabelState, str]] = ..., other_reviewer: _Optional[str] = ..., their_label: _Optional[_Union[LabelState, str]] = ..., created: _Optional[str] = ...) -> None: ...

class ConflictsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ConflictVerdict(_message.Message):
    __slots__ = ("reviewer", "label", "created", "note")
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    reviewer: str
    label: LabelState
    created: str
    note: str
    def __init__(self, reviewer: _Optional[str] = ..., label: _Optional[_Union[LabelState, str]] = ..., created: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class Conflict(_message.Message):
    __slots__ = ("candidate_id", "request_id", "box", "verdicts")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    request_id: str
    box: Box
    verdicts: _containers.RepeatedCompositeFieldContainer[ConflictVerdict]
    def __init__(self, candidate_id: _Optional[str] = ..., request_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., verdicts: _Optional[_Iterable[_Union[ConflictVerdict, _Mapping]]] = ...) -> None: ...

class ConflictList(_message.Message):
    __slots__ = ("conflicts",)
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class Retraction(_message.Message):
    __slots__ = ("event_id", "idempotency_key", "reviewer")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    idempotency_key: str
    reviewer: str
    def __init__(self, event_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., reviewer: _Optional[str] = ...) -> None: ...

class Adjudication(_message.Message):
    __slots__ = ("candidate_id", "verdict", "idempotency_key", "note")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    verdict: Verdict
    idempotency_key: str
    note: str
    def __init__(self, candidate_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., idempotency_key: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class QueueRequest(_message.Message):
    __slots__ = ("limit", "variant", "seed", "omega", "alpha", "lambda1", "lambda2")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OMEGA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    LAMBDA1_FIELD_NUMBER: _ClassVar[int]
    LAMBDA2_FIELD_NUMBER: _ClassVar[int]
    limit: int
    variant: str
    seed: int
    omega: float
    alpha: float
    lambda1: float
    lambda2: float
    def __init__(self, limit: _Optional[int] = ..., variant: _Optional[str] = ..., seed: _Optional[int] = ..., omega: _Optional[float] = ..., alpha: _Optional[float] = ..., lambda1: _Optional[float] = ..., lambda2: _Optional[float] = ...) -> None: ...

class QueueItem(_message.Message):
    __slots__ = ("candidate_id", "request_id", "box", "score", "probability", "model_version", "frame_index", "source_id")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    request_id: str
    box: Box
    score: float
    probability: float
    model_version: str
    frame_index: int
    source_id: str
    def __init__(self, candidate_id: _Optional[str] = ..., request_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., probability: _Optional[float] = ..., model_version: _Optional[str] = ..., frame_index: _Optional[int] = ..., source_id: _Optional[str] = ...) -> None: ...

class QueueResponse(_message.Message):
    __slots__ = ("variant", "unlabeled", "items", "notices")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    variant: str
    unlabeled: int
    items: _containers.RepeatedCompositeFieldContainer[QueueItem]
    notices: _containers.RepeatedCompositeFieldContainer[ConflictNotice]
    def __init__(self, variant: _Optional[str] = ..., unlabeled: _Optional[int] = ..., items: _Optional[_Iterable[_Union[QueueItem, _Mapping]]] = ..., notices: _Optional[_Iterable[_Union[ConflictNotice, _Mapping]]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("since",)
    SINCE_FIELD_NUMBER: _ClassVar[int]
    since: str
    def __init__(self, since: _Optional[str] = ...) -> None: ...

class LabeledCandidate(_message.Message):
    __slots__ = ("candidate_id", "request_id", "box", "label", "conflict", "origin", "recipe", "model_version", "probability", "image_sha256", "image_height", "image_width", "frame_index", "source_id", "study_uid", "series_uid", "sop_instance_uid", "last_event_id", "labeled_at", "events", "adjudicated")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELED_AT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ADJUDICATED_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    request_id: str
    box: Box
    label: LabelState
    conflict: bool
    origin: str
    recipe: str
    model_version: str
    probability: float
    image_sha256: str
    image_height: int
    image_width: int
    frame_index: int
    source_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    last_event_id: str
    labeled_at: str
    events: int
    adjudicated: bool
    def __init__(self, candidate_id: _Optional[str] = ..., request_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[_Union[LabelState, str]] = ..., conflict: _Optional[bool] = ..., origin: _Optional[str] = ..., recipe: _Optional[str] = ..., model_version: _Optional[str] = ..., probability: _Optional[float] = ..., image_sha256: _Optional[str] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., frame_index: _Optional[int] = ..., source_id: _Optional[str] = ..., study_uid: _Optional[str] = ..., series_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., last_event_id: _Optional[str] = ..., labeled_at: _Optional[str] = ..., events: _Optional[int] = ..., adjudicated: _Optional[bool] = ...) -> None: ...

class ClaimRelease(_message.Message):
    __slots__ = ("candidate_ids",)
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, candidate_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClaimReleaseReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class ReviewStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionPrecision(_message.Message):
    __slots__ = ("model_version", "confirmed", "dismissed")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    DISMISSED_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    confirmed: int
    dismissed: int
    def __init__(self, model_version: _Optional[str] = ..., confirmed: _Optional[int] = ..., dismissed: _Optional[int] = ...) -> None: ...

class ReviewStats(_message.Message):
    __slots__ = ("reviewer", "unlabeled", "versions", "claimed_by_others", "claims_end")
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_BY_OTHERS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_END_FIELD_NUMBER: _ClassVar[int]
    reviewer: str
    unlabeled: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionPrecision]
    claimed_by_others: int
    claims_end: str
    def __init__(self, reviewer: _Optional[str] = ..., unlabeled: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionPrecision, _Mapping]]] = ..., claimed_by_others: _Optional[int] = ..., claims_end: _Optional[str] = ...) -> None: ...

class ReviewImageRequest(_message.Message):
    __slots__ = ("request_id", "labels_only", "window", "offset_mm")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_ONLY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    labels_only: bool
    window: Window
    offset_mm: float
    def __init__(self, request_id: _Optional[str] = ..., labels_only: _Optional[bool] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., offset_mm: _Optional[float] = ...) -> None: ...

class VolumeView(_message.Message):
    __slots__ = ("series_uid", "slice_index", "sop_instance_uid", "point_mm", "window", "candidate_window", "offset_mm", "scroll_limit_mm", "mm_per_pixel", "missed_reach_mm", "panel")
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    SLICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    POINT_MM_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MM_FIELD_NUMBER: _ClassVar[int]
    SCROLL_LIMIT_MM_FIELD_NUMBER: _ClassVar[int]
    MM_PER_PIXEL_FIELD_NUMBER: _ClassVar[int]
    MISSED_REACH_MM_FIELD_NUMBER: _ClassVar[int]
    PANEL_FIELD_NUMBER: _ClassVar[int]
    series_uid: str
    slice_index: int
    sop_instance_uid: str
    point_mm: Point3D
    window: Window
    candidate_window: Window
    offset_mm: float
    scroll_limit_mm: float
    mm_per_pixel: float
    missed_reach_mm: float
    panel: int
    def __init__(self, series_uid: _Optional[str] = ..., slice_index: _Optional[int] = ..., sop_instance_uid: _Optional[str] = ..., point_mm: _Optional[_Union[Point3D, _Mapping]] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., candidate_window: _Optional[_Union[Window, _Mapping]] = ..., offset_mm: _Optional[float] = ..., scroll_limit_mm: _Optional[float] = ..., mm_per_pixel: _Optional[float] = ..., missed_reach_mm: _Optional[float] = ..., panel: _Optional[int] = ...) -> None: ...

class ReviewCandidate(_message.Message):
    __slots__ = ("candidate_id", "box", "probability", "label", "labeled_by", "conflict", "model_version", "origin", "score", "entropy", "diversity")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELED_BY_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    box: Box
    probability: float
    label: LabelState
    labeled_by: str
    conflict: bool
    model_version: str
    origin: str
    score: float
    entropy: float
    diversity: float
    def __init__(self, candidate_id: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., probability: _Optional[float] = ..., label: _Optional[_Union[LabelState, str]] = ..., labeled_by: _Optional[str] = ..., conflict: _Optional[bool] = ..., model_version: _Optional[str] = ..., origin: _Optional[str] = ..., score: _Optional[float] = ..., entropy: _Optional[float] = ..., diversity: _Optional[float] = ...) -> None: ...

class ReviewImage(_message.Message):
    __slots__ = ("request_id", "png", "width", "height", "frame_index", "model_version", "recipe", "candidates", "volume")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    png: bytes
    width: int
    height: int
    frame_index: int
    model_version: str
    recipe: str
    candidates: _containers.RepeatedCompositeFieldContainer[ReviewCandidate]
    volume: VolumeView
    def __init__(self, request_id: _Optional[str] = ..., png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frame_index: _Optional[int] = ..., model_version: _Optional[str] = ..., recipe: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[ReviewCandidate, _Mapping]]] = ..., volume: _Optional[_Union[VolumeView, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionSummary(_message.Message):
    __slots__ = ("version", "created", "parent_version", "sha256", "val_auc", "serving", "pinned", "refused")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VAL_AUC_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    version: str
    created: str
    parent_version: str
    sha256: str
    val_auc: float
    serving: bool
    pinned: bool
    refused: str
    def __init__(self, version: _Optional[str] = ..., created: _Optional[str] = ..., parent_version: _Optional[str] = ..., sha256: _Optional[str] = ..., val_auc: _Optional[float] = ..., serving: _Optional[bool] = ..., pinned: _Optional[bool] = ..., refused: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "pinned_version", "serving_version")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionSummary]
    pinned_version: str
    serving_version: str
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionSummary, _Mapping]]] = ..., pinned_version: _Optional[str] = ..., serving_version: _Optional[str] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("version", "reason", "actor")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    version: str
    reason: str
    actor: str
    def __init__(self, version: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("actor",)
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    actor: str
    def __init__(self, actor: _Optional[str] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("serving_version", "pinned_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: str
    pinned_version: str
    def __init__(self, serving_version: _Optional[str] = ..., pinned_version: _Optional[str] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("since", "action", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: str
    action: str
    limit: int
    def __init__(self, since: _Optional[str] = ..., action: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "created", "actor", "action", "target", "detail_json")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    created: str
    actor: str
    action: str
    target: str
    detail_json: str
    def __init__(self, event_id: _Optional[str] = ..., created: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class AuditResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...
