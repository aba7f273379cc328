from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("dicom", "encoded", "raw", "frame_index", "candidates", "recipe", "window", "source_id")
    DICOM_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    dicom: bytes
    encoded: bytes
    raw: RawImage
    frame_index: int
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    recipe: str
    window: Window
    source_id: str
    def __init__(self, dicom: _Optional[bytes] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., frame_index: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., recipe: _Optional[str] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., source_id: _Optional[str] = ...) -> None: ...

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
