"""An upload -> an RGB photo, or the HTTP error that names the problem.

The body is read as it arrives and parsed in memory (python-multipart's streaming parser; nothing
is written to disk): the `image` field of a multipart/form-data form, or the whole body when it is
sent as image/* or application/octet-stream. Past `limit` bytes the rest is read and dropped (so
the client gets its 413 instead of a broken pipe) up to `DRAIN_BYTES` more, then the connection
is given up. Decoding is `data.images.decode_image`: the project's rules (EXIF orientation, modes,
the pixel limit from the header before any decoding).

Statuses: 413 too many bytes or pixels (a decompression bomb's header claims them), 415 not an
image (or no image field), 422 an image whose data is truncated or corrupt, 400 a malformed form.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = "image"
DRAIN_BYTES = 256 * 1024 * 1024  # read and drop at most this much past the limit before giving up
FORM_SLACK = 64 * 1024  # a form's boundaries and headers around the image's bytes
RAW_TYPES = ("image/", "application/octet-stream")
STATUS = {"pixels": 413, "format": 415, "corrupt": 422}


class UploadError(Exception):
    """`status` and the one-line message the JSON answer carries."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def too_big(size: int, limit: int) -> UploadError:
    return UploadError(413, f"upload of {_mb(size)} exceeds the limit of {_mb(limit)} (--max-upload-mb)")


async def read_upload(content_type: str | None, chunks: AsyncIterator[bytes], limit: int) -> Upload:
    """The image's bytes from a request body arriving as `chunks`."""
    kind, params = parse_options_header(content_type or "")
    kind = kind.decode("latin-1").lower()
    if kind == "multipart/form-data":
        if not params.get(b"boundary"):
            raise UploadError(400, "multipart/form-data without a boundary")
        form = _Form(params[b"boundary"], limit)
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if form.over or total > limit + FORM_SLACK:
                form.over = True
                if total > limit + DRAIN_BYTES:
                    break
                continue
            form.write(chunk)
        if form.over:
            raise too_big(total, limit)
        return form.finish()
    if kind.startswith(RAW_TYPES):
        data, total = bytearray(), 0
        async for chunk in chunks:
            total += len(chunk)
            if total > limit + DRAIN_BYTES:
                break
            if total <= limit:
                data += chunk
        if total > limit:
            raise too_big(total, limit)
        return Upload(bytes(data), "upload")
    raise UploadError(
        415,
        f"expected a multipart/form-data form with an {FIELD!r} file field, or an image as the body "
        f"(image/* or application/octet-stream), got Content-Type {content_type or 'none'!r}",
    )


class _Form:
    """The `image` part of a multipart form, fed chunk by chunk; other fields are skipped."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit, self.over = limit, False
        self.image: bytearray | None = None
        self.filename = "upload"
        self._field, self._value, self._headers = b"", b"", {}
        self._current: bytearray | None = None
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }
        self.parser = MultipartParser(boundary, callbacks)

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers, self._current = {}, None

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FIELD.encode() and self.image is None:
            self.image = self._current = bytearray()
            name = params.get(b"filename", b"").decode("utf-8", "replace").replace("\\", "/").split("/")[-1]
            self.filename = name or "upload"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current += data[start:end]
            if len(self._current) > self.limit:
                self.over = True

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as err:
            raise UploadError(400, f"malformed multipart/form-data ({err})") from None

    def finish(self) -> Upload:
        try:
            self.parser.finalize()
        except MultipartParseError as err:
            raise UploadError(400, f"malformed multipart/form-data ({err})") from None
        if self.image is None:
            raise UploadError(415, f"no {FIELD!r} file field in the form (multipart/form-data)")
        return Upload(bytes(self.image), self.filename)


def decode(upload: Upload, max_pixels: int) -> np.ndarray:
    """H x W x 3 uint8 RGB (EXIF applied), or the `UploadError` for what is wrong with it."""
    from pdfnet_pipeline.data.images import BadInputError, decode_image

    if not upload.data:
        raise UploadError(415, f"{upload.filename}: empty upload, not an image")
    try:
        return decode_image(upload.data, name=upload.filename, max_pixels=max_pixels)
    except BadInputError as err:
        message = str(err)
        if err.kind == "pixels":
            message += " (--max-pixels)"
        raise UploadError(STATUS.get(err.kind, 422), message) from None
