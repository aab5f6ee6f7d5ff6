"""The FastAPI application behind ``ferkit serve``.

Endpoints: ``POST /v1/predict`` (an image as the multipart field ``file`` or as the raw
request body), ``GET /v1/health``, ``GET /v1/models``, the web page at ``/`` (its assets
under ``/static/``, no third-party resources), the OpenAPI schema at ``/openapi.json`` and
FastAPI's docs pages at ``/docs`` and ``/redoc`` (these load Swagger UI / ReDoc from
cdn.jsdelivr.net, so they stay blank for a browser that cannot reach it; ``/openapi.json``
needs nothing else).

Every error is JSON, ``{"error": {"code": ..., "message": ...}}``:

* 400 ``bad_request`` / ``missing_file`` / ``empty_upload`` / ``unknown_parameter``: a
  malformed request (the service has no per-request options: any query parameter is one);
* 400 ``bad_host``: the ``Host`` header names none of ``Settings.allowed_hosts`` (when set);
* 413 ``upload_too_large``: the body exceeds ``max_upload_bytes``, refused while it is read
  (a declared ``Content-Length`` above the limit is refused before any of it is read);
* 413 ``too_many_pixels``: the image header declares more than ``max_pixels`` pixels
  (checked with PIL before anything is decoded: decompression bombs never reach the decoder);
* 415 ``unsupported_media_type``: a Content-Type or image format the service does not take,
  or a compressed body (any ``Content-Encoding`` but ``identity``);
* 422 ``corrupt_image``: not a readable image;
* 503 ``busy`` (with ``Retry-After``): every inference worker is busy and the wait queue is
  full; the request did not run (its body is not read when the queue is full already) and
  may be retried.

A request whose client disconnects while it waits for a worker is withdrawn from the queue
(its slot frees at once); one that is already running finishes and its answer is dropped.

Inference runs on a fixed number of worker threads fed by a bounded queue (`InferencePool`);
the event loop only reads requests, checks headers and writes answers. The model loads once,
when `create_app` runs. Clients never name files: images come only in request bodies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import email.message
import io
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..argtypes import BACKENDS, TTA_MODES
from ..faces import FaceDetector
from ..recognize import MAX_SIDE, ImageError, Recognizer, load_image
from . import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE

log = logging.getLogger("ferkit.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MB = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed above the file limit

# Formats decoded for clients: common photo formats only (PIL's rarer plugins, and EPS,
# which runs Ghostscript, never see client data).
_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
Image.init()
ACCEPTED_FORMATS = tuple(f for f in _FORMATS if f in Image.OPEN)
_FORMAT_MIME = {
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "MPO": ("image/mpo",),
    "PNG": ("image/png", "image/x-png", "image/apng"),
    "WEBP": ("image/webp",),
    "GIF": ("image/gif",),
    "BMP": ("image/bmp", "image/x-bmp", "image/x-ms-bmp"),
    "TIFF": ("image/tiff", "image/tiff-fx"),
    "PPM": ("image/x-portable-anymap", "image/x-portable-pixmap", "image/x-portable-graymap",
            "image/x-portable-bitmap"),  # .pbm: what browsers and curl send for it
    "AVIF": ("image/avif",),
}
_FORMAT_NAMES = {"WEBP": "WebP"}
# every accepted Content-Type, main type of each format first (OpenAPI lists them in order)
ACCEPTED_IMAGE_TYPES = tuple(m for f in ACCEPTED_FORMATS for m in _FORMAT_MIME[f])
RAW_TYPES = frozenset(ACCEPTED_IMAGE_TYPES) | {"application/octet-stream"}
# what the 415 message suggests: one type per format (the aliases are accepted too)
_MAIN_TYPES = tuple(_FORMAT_MIME[f][0] for f in ACCEPTED_FORMATS) + ("application/octet-stream",)
# format names said with a vowel sound although spelled with a consonant ("an SGI image")
_VOWEL_SOUND = frozenset({"FLI", "FTEX", "HDF5", "MPEG", "MPO", "MSP", "SGI", "XBM", "XPM",
                          "XVTHUMB"})  # fmt: skip
# the service's answers carry probabilities and pixel positions: more digits are noise
DECIMALS = 6
# how often a request waiting for its result checks that its client is still there
DISCONNECT_POLL_S = 0.1


@dataclass
class Settings:
    """Limits and start-up options of the service (``ferkit serve`` flags of the same names).

    ``model`` / ``detector`` / ``device`` / ``backend`` build the `Recognizer` when
    `create_app` is given none (``backend="onnx"``: onnxruntime, whose session the
    workers share; it is thread-safe). ``workers``: inference threads; ``queue``: requests
    that may wait for a worker (more are refused with 503). ``cors_origins``: origins
    allowed to call the API from other pages (none: CORS off). ``allowed_hosts``: the host
    names the service answers to (the request's ``Host`` header without its port; others
    get 400 ``bad_host``: a guard against DNS rebinding, where a page of another site
    reaches a service on localhost through a name it controls); empty or ``"*"``: any.
    ``model_name``: the name reported in answers (default: the weights name or the
    checkpoint's file name). ``auto_contrast`` and ``tta``: as `Recognizer`'s (low-contrast
    faces rescaled to the training faces' typical contrast; test-time views per face).
    """

    model: str | None = None
    detector: str | FaceDetector = "blazeface"
    device: str = "auto"
    backend: str = "torch"
    workers: int = 1
    queue: int = DEFAULT_QUEUE
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MB)
    max_pixels: int = DEFAULT_MAX_PIXELS
    cors_origins: Sequence[str] = field(default_factory=tuple)
    allowed_hosts: Sequence[str] = field(default_factory=tuple)
    retry_after_s: int = 1
    model_name: str | None = None
    auto_contrast: bool = True
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'torch' or 'onnx', not {self.backend!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {self.tta!r}")
        if self.queue < 0:
            raise ValueError(f"queue must be 0 or more, not {self.queue}")
        if self.max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be positive")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if isinstance(self.cors_origins, str):
            raise ValueError("cors_origins must be a list of origins, not one string")
        for origin in self.cors_origins:
            if origin != "*" and not _is_origin(origin):
                # a browser's Origin header is compared as it is: "https://example.org/" or
                # "example.org" would never match, and CORS would stay off without a word
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin as browsers send it: "
                    "scheme://host[:port] in lower case, e.g. https://example.org or "
                    "http://localhost:3000 (no path, not even a trailing '/'), or * for any"
                )
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts must be a list of host names, not one string")
        for host in self.allowed_hosts:
            bare = host.strip("[]")
            as_header = f"[{bare}]" if ":" in bare else bare  # an IPv6 address is bracketed
            if host != "*" and (_host_name(as_header) != bare.lower() or not bare.isprintable()
                                or " " in bare):
                raise ValueError(
                    f"allowed_hosts: {host!r} is not a host name (e.g. localhost, "
                    "example.org, 192.0.2.7 or ::1; no scheme, port or path)"
                )


def _is_origin(text: str) -> bool:
    """Whether ``text`` is an origin as a browser's ``Origin`` header gives it."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError:
        return False
    return (
        bool(parts.scheme)
        and bool(parts.hostname)
        and parts.username is None
        and not (parts.path or parts.query or parts.fragment)
        and text == text.strip().lower()
        and "?" not in text and "#" not in text
    )


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# ---- the worker pool ----


class InferencePool:
    """A fixed set of worker threads and a bounded wait queue.

    ``runners``: one object per thread, passed to each job (e.g. a `Recognizer` per thread,
    sharing the model but with its own face detector). `submit` never blocks: it returns
    None when all workers are busy and ``queue_size`` jobs already wait.
    """

    def __init__(self, runners: Sequence[Any], queue_size: int) -> None:
        self.workers = len(runners)
        self.queue_size = queue_size
        self.capacity = self.workers + queue_size
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: deque = deque()
        self._pending = 0  # queued + running
        self._busy = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(r,), name=f"ferkit-infer-{i}", daemon=True)
            for i, r in enumerate(runners)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future | None:
        """Queue ``fn(runner)``; its Future, or None when the pool is full or closed."""
        with self._lock:
            if self._closed or self._pending >= self.capacity:
                return None
            self._pending += 1
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._jobs.append((fn, fut))
            self._ready.notify()
            return fut

    def cancel(self, fut: concurrent.futures.Future) -> bool:
        """Withdraw a job whose client went away. A waiting job leaves the queue and its
        slot frees at once; one a worker has taken but not started is skipped by it; one
        already running finishes (nobody reads its result). True when it will not run."""
        with self._lock:
            queued = next((job for job in self._jobs if job[1] is fut), None)
            if queued is not None:
                self._jobs.remove(queued)
                self._pending -= 1
        # outside the lock: a Future runs its callbacks in the thread that cancels it
        return fut.cancel()

    def stats(self) -> dict[str, Any]:
        """Workers, queue size, busy and waiting jobs, and whether a new job is accepted."""
        with self._lock:
            return {
                "workers": self.workers,
                "queue_size": self.queue_size,
                "busy": self._busy,
                "waiting": self._pending - self._busy,
                "accepting": not self._closed and self._pending < self.capacity,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, cancel the waiting ones, let running ones finish, stop the threads."""
        with self._lock:
            self._closed = True
            while self._jobs:
                _, fut = self._jobs.popleft()
                fut.cancel()
                self._pending -= 1
            self._ready.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _work(self, runner: Any) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                fn, fut = self._jobs.popleft()
                self._busy += 1
            # False: the client went away between this worker taking the job and starting
            # it (`cancel`); waiting jobs of vanished clients never reach a worker
            run = fut.set_running_or_notify_cancel()
            result = error = None
            try:
                if run:
                    result = fn(runner)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                error = exc
            finally:
                # free the slot before answering: a client that sends its next request as
                # soon as it has this answer must find the slot free
                with self._lock:
                    self._busy -= 1
                    self._pending -= 1
            if run:
                if error is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(error)
                del result, error


def _worker_recognizers(recognizer: Any, n: int) -> list[Any]:
    """One recognizer per worker: shallow copies sharing the model (PyTorch inference is
    thread-safe), each with its own clone of the face detector (same options; OpenCV's
    cascade is not thread-safe). A recognizer whose detector cannot be cloned is shared by
    all workers behind a lock."""
    if n == 1:
        return [recognizer]
    detector = getattr(recognizer, "detector", None)
    if isinstance(recognizer, Recognizer) and hasattr(detector, "clone"):
        # every worker a clone (the original's detector may differ, e.g. in threads)
        out = []
        for _ in range(n):
            clone = copy.copy(recognizer)
            clone.detector = detector.clone()
            out.append(clone)
        return out
    log.warning("cannot clone the face detector per worker; workers share one")
    return [_Locked(recognizer)] * n


class _Locked:
    """A recognizer shared by several threads, one `predict` at a time."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def predict(self, image):
        with self._lock:
            return self._inner.predict(image)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


# ---- reading and checking uploads ----


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"the upload exceeds the limit of {_size_text(limit)}; send a smaller image",
    )


def _size_text(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n} bytes"


async def read_limited(request: Request, limit: int, shown_limit: int | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (the
    message names ``shown_limit``, default ``limit``)."""
    shown_limit = limit if shown_limit is None else shown_limit
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
        if declared_size > limit:
            raise _too_large(shown_limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(shown_limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client closed the connection") from None
    return b"".join(chunks)


def _with_article(name: str, *more: str) -> str:
    """The names after the article ``name`` takes as it is said: "a JPEG", "an ICO",
    "an SGI", "a JPEG, PNG or GIF"."""
    vowel = name[:1].upper() in "AEIOU" or name.upper() in _VOWEL_SOUND
    return f"{'an' if vowel else 'a'} {_one_of([name, *more])}"


def _one_of(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]


def _unsupported_type(what: str) -> ApiError:
    names = [_FORMAT_NAMES.get(f, f) for f in ACCEPTED_FORMATS if f != "MPO"]
    return ApiError(
        415,
        "unsupported_media_type",
        f"{what} is not accepted; send {_with_article(*names)} image as the multipart "
        f"field 'file' or as the request body with the Content-Type {_one_of(_MAIN_TYPES)}",
    )


def _refuse_content_encoding(request: Request) -> None:
    """415 for a compressed body (``Content-Encoding: gzip``, ...): the service reads image
    bytes as they are, so a compressed body would be called a corrupt image."""
    codings = [c.strip().lower() for c in request.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if codings:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {', '.join(repr(c) for c in codings)} is not accepted: send the "
            "image file's bytes as they are, without a Content-Encoding (image formats are "
            "compressed already)",
        )


def _multipart_complete(content_type: str, body: bytes) -> bool:
    """Whether a multipart body ends with its closing boundary (``--BOUNDARY--``)."""
    msg = email.message.Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return True  # the parser has already said what is wrong with it
    return f"--{boundary}--".encode("latin-1", "replace") in body


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """(image bytes, declared media type) of a multipart or raw-body upload."""
    media = _media_type(request)
    _refuse_content_encoding(request)
    if media == "multipart/form-data":
        body = await read_limited(request, max_bytes + MULTIPART_OVERHEAD, max_bytes)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile) and not _multipart_complete(
                request.headers.get("content-type", ""), body
            ):
                raise ApiError(
                    400,
                    "bad_request",
                    "the multipart body ends before its closing boundary (an incomplete "
                    "upload?); send the whole form with the image as the multipart field 'file'",
                )
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400, "missing_file", "no file: send the image as the multipart field 'file'"
                )
            data = await upload.read()
            part_type = (upload.content_type or "").split(";", 1)[0].strip().lower()
        finally:
            await form.close()
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        if part_type and part_type not in RAW_TYPES:
            raise _unsupported_type(f"a file of type {part_type!r}")
        return data, part_type
    if media in RAW_TYPES:
        return await read_limited(request, max_bytes), media
    if media.startswith("image/"):
        raise _unsupported_type(f"Content-Type {media!r}")
    raise _unsupported_type(f"Content-Type {media!r}" if media else "a body without Content-Type")


def check_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the image header, without decoding any pixels."""
    if not data:
        raise ApiError(400, "empty_upload", "the upload is empty")
    try:
        # no warnings.catch_warnings() here: it is not thread-safe, and the workers decode
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            fmt, (width, height) = str(img.format), img.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"the image is too large ({exc})") from None
    except UnidentifiedImageError:
        other = _identify(data)
        if other:
            raise _unsupported_type(f"{_with_article(other)} image") from None
        raise ApiError(
            422, "corrupt_image", "the upload is not a readable image (unknown or damaged data)"
        ) from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ApiError(
            422, "corrupt_image", f"the image header cannot be read ({type(exc).__name__})"
        ) from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the image has {width} x {height} = {width * height:,} pixels, more than the "
            f"limit of {max_pixels:,}; send a smaller image",
        )
    return fmt, width, height


#: Formats named (never decoded) when a client sends one: common image files, whose headers
#: PIL reads without decoding (EPS too: Ghostscript would run only to decode); PIL's other
#: plugins never see client bytes.
_NAMED_FORMATS = tuple(
    f for f in ("JPEG2000", "ICO", "PSD", "TGA", "DDS", "QOI", "PCX", "SGI", "XBM", "EPS")
    if f in Image.OPEN
)


def _identify(data: bytes) -> str | None:
    """The name of a known image format that the service does not take (header only)."""
    try:
        with Image.open(io.BytesIO(data), formats=_NAMED_FORMATS) as img:
            return str(img.format)
    except Exception:
        return None


# ---- response models (for the OpenAPI docs) ----


class ErrorBody(BaseModel):
    code: str = Field(
        description="machine-readable: bad_request, bad_host, missing_file, empty_upload, "
        "unknown_parameter, upload_too_large, too_many_pixels, unsupported_media_type, "
        "corrupt_image, busy, not_found, method_not_allowed, invalid_request, internal_error",
        examples=["too_many_pixels"],
    )
    message: str = Field(description="what went wrong and what to send instead, in English")


class ErrorOut(BaseModel):
    error: ErrorBody


class FaceOut(BaseModel):
    box: list[int] = Field(
        description="[x, y, width, height] in pixels of the uploaded image as shown, i.e. after "
        "its EXIF orientation is applied; (x, y) is the top-left corner"
    )
    label: str = Field(description="the most probable expression (a class of the model)")
    confidence: float = Field(description="the probability of `label`, 0..1")
    scores: dict[str, float] = Field(
        description="every class of the model -> its probability (0..1; they sum to 1), in "
        "the model's class order"
    )
    landmarks: list[list[float]] | None = Field(
        default=None,
        description="BlazeFace's 6 keypoints as [x, y] in pixels of the image, in this order: "
        "right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion "
        "(right and left of the person in the photo); null for faces the Haar cascade found",
    )
    detection_score: float | None = Field(
        default=None,
        description="the face detector's confidence, on the detector's own scale, so it is "
        "comparable only between faces of one detector: for BlazeFace a probability 0..1, for "
        "the Haar cascade the number of merged neighbour windows (an integer, at least 5 with "
        "the default options); null for the detector 'none'",
    )
    detector: str | None = Field(
        default=None,
        description="the face detector of the service (`ferkit serve --detector`): "
        "'blazeface', 'haar', 'none' or 'blazeface+haar'. With 'blazeface+haar' the Haar "
        "cascade searches only photos where BlazeFace finds no face: a face with landmarks "
        "was found by BlazeFace, one without by the Haar cascade",
    )


class ImageSize(BaseModel):
    width: int = Field(description="pixels, after the EXIF orientation is applied")
    height: int = Field(description="pixels, after the EXIF orientation is applied")


class PredictOut(BaseModel):
    faces: list[FaceOut] = Field(description="the faces found, left to right; [] for none")
    model: str = Field(description="the name of the model that classified the faces")
    timing_ms: dict[str, float] = Field(
        description="queue (waiting for a worker), decode, inference (detection and "
        "classification) and total (from the first byte read to the answer)"
    )
    image: ImageSize


class AcceptsOut(BaseModel):
    formats: list[str] = Field(description="image formats read, e.g. JPEG, PNG")
    media_types: list[str] = Field(
        description="Content-Types accepted for a raw request body or a multipart part "
        "(the bytes decide the format)"
    )
    extensions: list[str] = Field(description="file name extensions of these formats")


class HealthOut(BaseModel):
    status: str = Field(description="'ok' while the service runs")
    version: str = Field(description="the ferkit version")
    model: str = Field(description="the name of the loaded model")
    workers: int = Field(description="inference threads")
    queue_size: int = Field(description="requests that may wait for a worker")
    busy: int = Field(description="workers running a request now")
    waiting: int = Field(description="requests waiting for a worker now")
    accepting: bool = Field(
        description="false while every worker is busy and the queue is full: a prediction "
        "request now gets 503"
    )
    limits: dict[str, int] = Field(
        description="max_upload_bytes (larger uploads get 413) and max_pixels (larger images "
        "get 413)"
    )
    accepts: AcceptsOut


class ModelOut(BaseModel):
    name: str
    architecture: str | None
    classes: list[str] = Field(description="the expressions, in the model's order")
    preprocessing: dict[str, Any]
    detector: str | None = Field(description="the face detector (`ferkit serve --detector`)")
    backend: str | None = Field(description="'torch' (PyTorch) or 'onnx' (onnxruntime)")
    device: str | None = Field(description="where the model runs, e.g. 'cpu' or 'cuda'")
    auto_contrast: bool | None = Field(
        None, description="whether faces of very low contrast (dark, washed-out) are "
        "rescaled to the training faces' typical contrast before scoring"
    )
    tta: str | None = Field(
        None, description="test-time views per face: 'none', 'flip' (the face and its "
        "mirror) or 'ten-crop'"
    )
    default: bool


class ModelsOut(BaseModel):
    models: list[ModelOut]


def _errors(*codes: int) -> dict:
    text = {
        400: "malformed request",
        413: "upload or image too large",
        415: "unsupported media type or image format",
        422: "corrupt image",
        503: "busy: retry after Retry-After seconds",
    }
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# the concrete types read_upload takes (not "image/*": HEIC or SVG, say, get 415)
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{media: _BINARY for media in ACCEPTED_IMAGE_TYPES},
            "application/octet-stream": _BINARY,
        },
    }
}

ACCEPTS = {
    "formats": [_FORMAT_NAMES.get(f, f) for f in ACCEPTED_FORMATS if f != "MPO"],
    "media_types": [*ACCEPTED_IMAGE_TYPES, "application/octet-stream"],
    "extensions": sorted(e for e, f in Image.registered_extensions().items()
                         if f in ACCEPTED_FORMATS),
}  # fmt: skip


# ---- answering ----


def _allow_pixels(max_pixels: int) -> None:
    """Let PIL open images up to ``max_pixels``: past ``2 * Image.MAX_IMAGE_PIXELS`` it
    refuses them as decompression bombs, whatever the service's own limit. Raising it is
    safe here: `check_header` applies ``max_pixels`` before anything is decoded."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _refuse_query(request: Request) -> None:
    """400 for query parameters: none has a meaning, and ignoring one (``?model=...``)
    would answer from another model than the client asked for without a word."""
    names = sorted(set(request.query_params.keys()))
    if names:
        listed = ", ".join(repr(n) for n in names)
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown query parameter{'s' if len(names) > 1 else ''} {listed}: the service has "
            "no per-request options (the model, the face detector and the limits are chosen "
            "when the service starts: ferkit serve --model ... --detector ...)",
        )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), DECIMALS)


def _face_json(face: dict, detector: str | None) -> dict:
    """A face of the answer: floats to `DECIMALS` places and the detector's name."""
    landmarks = face.get("landmarks")
    return {
        **face,
        "confidence": _round(face["confidence"]),
        "scores": {k: _round(v) for k, v in face["scores"].items()},
        "landmarks": None if landmarks is None else [[_round(v) for v in p] for p in landmarks],
        "detection_score": _round(face.get("detection_score")),
        "detector": detector,
    }


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def _result_unless_gone(
    request: Request, pool: InferencePool, fut: concurrent.futures.Future
) -> Any:
    """The job's result, awaited while watching the client: when it disconnects first, the
    job is withdrawn from the pool (a waiting job frees its slot at once) and the request
    ends with a 400 nobody reads. Without this, clients that gave up would hold the queue
    while new requests wait behind them or get 503."""
    job = asyncio.wrap_future(fut)
    watch = asyncio.ensure_future(_client_gone(request))

    def withdraw() -> None:
        pool.cancel(fut)
        job.cancel()  # a running job's result is dropped when it comes

    try:
        await asyncio.wait((job, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping: the job is not wanted either
        withdraw()
        raise
    finally:
        watch.cancel()
    if job.done():
        return job.result()
    watch.result()  # an error of the watch itself is raised, not taken for a disconnect
    withdraw()
    log.info("client disconnected before its answer; job withdrawn")
    raise ApiError(400, "bad_request", "the client closed the connection")


# ---- the application ----


class _NoSniff:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _host_name(header: str | None) -> str | None:
    """The host name of a ``Host`` header (lower case, no port, IPv6 without brackets), or
    None when it is missing or malformed."""
    if not header:
        return None
    try:
        parts = urllib.parse.urlsplit("//" + header.strip())
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError:
        return None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname or None


class _HostCheck:
    """ASGI middleware: answers 400 ``bad_host`` to a request whose ``Host`` header names
    none of ``allowed`` (host names, lower case)."""

    def __init__(self, app, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.strip("[]").lower() for h in allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_name(header) not in self.allowed:
                shown = f"'{header}'" if header else "(none)"
                response = error_response(
                    400,
                    "bad_host",
                    f"this service does not answer to the Host {shown}; it answers to "
                    f"{', '.join(sorted(self.allowed))} (ferkit serve --allowed-host adds names)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _model_name(settings: Settings, meta: dict) -> str:
    if settings.model_name:
        return settings.model_name
    if settings.model is not None:
        p = Path(settings.model)
        return p.stem if p.suffix in (".safetensors", ".json") else p.name
    from ..weights import DEFAULT_MODEL

    return str(meta.get("name") or DEFAULT_MODEL)


_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "busy",
}

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def create_app(recognizer: Any = None, settings: Settings | None = None) -> FastAPI:
    """The ASGI app. ``recognizer``: a `Recognizer` (or any object with ``predict`` and
    ``class_names``); None builds one from ``settings`` now, so the model loads once."""
    settings = settings or Settings()
    if recognizer is None:
        recognizer = Recognizer(
            model=settings.model,
            detector=settings.detector,
            device=settings.device,
            backend=settings.backend,
            auto_contrast=settings.auto_contrast,
            tta=settings.tta,
        )
    _allow_pixels(settings.max_pixels)
    meta = dict(getattr(recognizer, "meta", {}) or {})
    name = _model_name(settings, meta)
    max_side = int(getattr(recognizer, "max_side", MAX_SIDE))
    detector = getattr(getattr(recognizer, "detector", None), "name", None) or None
    device = getattr(recognizer, "device", None)
    model_info = {
        "name": name,
        "architecture": meta.get("model"),
        "classes": [str(c) for c in recognizer.class_names],
        "preprocessing": dict(meta.get("preprocessing", {})),
        "detector": detector,
        "backend": getattr(recognizer, "backend", None),
        "device": None if device is None else str(device),
        "auto_contrast": getattr(recognizer, "auto_contrast", None),
        "tta": getattr(recognizer, "tta", None),
        "default": True,
    }
    pool = InferencePool(_worker_recognizers(recognizer, settings.workers), settings.queue)

    def _busy() -> ApiError:
        return ApiError(
            503,
            "busy",
            "the service is busy (all workers busy and the queue full); retry shortly",
            {"Retry-After": str(settings.retry_after_s)},
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()

    app = FastAPI(
        title="ferkit",
        version=__version__,
        description="Facial expression recognition: faces and their expression scores in "
        'photos. Errors are JSON objects `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.recognizer = recognizer
    app.state.model_name = name

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            expose_headers=["Retry-After"],
        )

    if settings.allowed_hosts and "*" not in settings.allowed_hosts:
        app.add_middleware(_HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(_NoSniff)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", str(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the server log")

    @app.post(
        "/v1/predict",
        response_model=PredictOut,
        responses=_errors(400, 413, 415, 422, 503),
        openapi_extra=_PREDICT_BODY,
        summary="Faces and expressions in one image",
    )
    async def predict(request: Request):
        """Send one image: as the multipart field ``file``, or as the raw request body with
        its image type (e.g. ``image/jpeg``) or ``application/octet-stream`` as the
        Content-Type. There are no query parameters: the model, the face detector and the
        limits are chosen when the service starts (``ferkit serve --model ...``)."""
        t_start = time.perf_counter()
        _refuse_query(request)
        if not pool.stats()["accepting"]:  # refused before the body is read, not after
            raise _busy()
        data, _ = await read_upload(request, settings.max_upload_bytes)
        check_header(data, settings.max_pixels)
        t_queued = time.perf_counter()

        def job(rec) -> dict:
            t0 = time.perf_counter()
            loaded = load_image(io.BytesIO(data), max_side=max_side, formats=ACCEPTED_FORMATS)
            t1 = time.perf_counter()
            faces = rec.predict(loaded)
            t2 = time.perf_counter()
            h, w = loaded.pixels.shape[:2]
            return {
                "faces": [_face_json(f.to_dict(), detector) for f in faces],
                "size": (round(w * loaded.scale[0]), round(h * loaded.scale[1])),
                "queue_ms": (t0 - t_queued) * 1000,
                "decode_ms": (t1 - t0) * 1000,
                "inference_ms": (t2 - t1) * 1000,
            }

        fut = pool.submit(job)
        if fut is None:
            raise _busy()
        try:
            result = await _result_unless_gone(request, pool, fut)
        except ImageError as exc:
            message = str(exc).removeprefix("<stream>: ")
            if "too large" in message:
                raise ApiError(413, "too_many_pixels", message) from None
            raise ApiError(422, "corrupt_image", message) from None
        width, height = result["size"]
        timing = {k: round(result[k], 2) for k in ("queue_ms", "decode_ms", "inference_ms")}
        timing["total_ms"] = round((time.perf_counter() - t_start) * 1000, 2)
        return JSONResponse(
            {
                "faces": result["faces"],
                "model": name,
                "timing_ms": timing,
                "image": {"width": width, "height": height},
            }
        )

    @app.get("/v1/health", response_model=HealthOut, summary="Service status and limits")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "model": name,
            **pool.stats(),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
            },
            "accepts": ACCEPTS,
        }

    @app.get("/v1/models", response_model=ModelsOut, summary="The loaded model")
    async def models():
        return {"models": [model_info]}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    # HEAD too (monitors and `curl -I` use it), outside the schema: the same operations
    for path, endpoint in (("/v1/health", health), ("/v1/models", models), ("/", index)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
