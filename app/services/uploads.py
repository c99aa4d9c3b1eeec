"""Receiving a multipart upload without holding it: the request body is parsed as it streams in
(python-multipart's push parser, fed from `request.stream()`), the file part goes straight into a
`Spool` (a temp file beside its final place, hashed and counted as it is written) and the small
form fields are kept. Over the limit, reading stops and the answer is a 413 — whether or not the
client sent a Content-Length, and before anything else is done with the bytes. (Starlette's own
`request.form()` would first spool the whole file to /tmp, with no limit on its size.)

The form's fields are read from the pydantic model that documents it in OpenAPI (`DatasetForm`,
`WeightsForm`): its `file` is the upload, its other fields the small text fields accepted, so a
field documented is a field parsed. Every problem is a 4xx in FastAPI's shape naming the field; the
temp file is removed on every path that does not hand it on."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tas.errors import InvalidUpload, body_error
from tas.store.files import WRITE_CHUNK, Spool

#: Room for the form's boundaries, part headers and small fields beside the file itself.
FORM_OVERHEAD = 64 * 1024
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16


@dataclass
class Received:
    """What a multipart upload carried: its small fields and its one file (finished spool)."""

    fields: dict[str, str]
    spool: Spool
    filename: str | None


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    def __init__(self, allowed: tuple[str, ...], charset: str) -> None:
        self.allowed = allowed
        self.charset = charset
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.saw_file = False
        self.part = _Part()
        self.parts = 0
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.pending = bytearray()  # file bytes not yet written to the spool
        self.ended = False

    def _decode(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError as exc:
            raise body_error(what, f"not valid {self.charset} text") from exc

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise body_error("file", f"too many form parts; at most {MAX_PARTS}")
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise body_error(
                "file", 'a form part without a name (Content-Disposition: form-data; name="…")'
            )
        name = self._decode(options[b"name"], "file")
        self.part.name = name
        if name == "file":
            if self.saw_file:
                raise body_error("file", "send one file per upload, in the field 'file'")
            self.saw_file = True
            self.part.is_file = True
            if b"filename" in options:
                self.filename = self._decode(options[b"filename"], "file")
        elif b"filename" in options:
            raise body_error(name, "a file in a field other than 'file'; send the upload as 'file'")
        elif name not in self.allowed:
            raise body_error(name, f"unknown form field; allowed: file, {', '.join(self.allowed)}")
        elif name in self.fields:
            raise body_error(name, "given twice; send each field once")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.is_file:
            self.pending += data[start:end]
            return
        self.part.data += data[start:end]
        if len(self.part.data) > MAX_FIELD_BYTES:
            raise body_error(self.part.name or "file", f"longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if not self.part.is_file and self.part.name is not None:
            self.fields[self.part.name] = self._decode(bytes(self.part.data), self.part.name)

    def on_end(self) -> None:
        self.ended = True


def text_fields(form: type[BaseModel]) -> tuple[str, ...]:
    """The small fields of a documented form: all of its fields but `file` (the upload), in their
    order (the order an unknown field's 422 lists them in)."""
    assert "file" in form.model_fields, f"{form.__name__} documents no 'file' field"
    return tuple(name for name in form.model_fields if name != "file")


async def receive(request: Request, spool: Spool, *, form: type[BaseModel]) -> Received:
    """Parse a multipart/form-data body into `spool` (which the caller owns and discards on error)
    and the small fields `form` documents. 415 for another content type; 413 past the spool's
    limit; 422 for a malformed body, an unknown field or a missing `file`."""
    allowed = text_fields(form)
    ctype = request.headers.get("content-type", "")
    media, params = parse_options_header(ctype)
    if media != b"multipart/form-data":
        raise InvalidUpload(
            [
                (
                    ("header", "content-type"),
                    f"send multipart/form-data with the upload in the field 'file', not {ctype or 'no content type'!r}",
                )
            ],
            415,
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidUpload(
            [(("header", "content-type"), "multipart/form-data without a boundary")]
        )
    max_body = spool.max_bytes + FORM_OVERHEAD
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise spool.refused()
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"

    r = _Receiver(allowed, charset)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": r.on_part_begin,
            "on_part_data": r.on_part_data,
            "on_part_end": r.on_part_end,
            "on_header_field": r.on_header_field,
            "on_header_value": r.on_header_value,
            "on_header_end": r.on_header_end,
            "on_headers_finished": r.on_headers_finished,
            "on_end": r.on_end,
        },
    )
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_body:
                raise spool.refused()
            parser.write(chunk)
            if len(r.pending) >= WRITE_CHUNK:
                data, r.pending = bytes(r.pending), bytearray()
                await run_in_threadpool(spool.write, data)
        parser.finalize()
    except FormParserError as exc:
        raise body_error("file", f"not valid multipart/form-data ({exc})") from exc
    if not r.ended:
        raise body_error("file", "the multipart body ended early (no closing boundary)")
    if not r.saw_file:
        raise body_error("file", "field required: attach the upload as the form field 'file'")
    tail = bytes(r.pending)
    r.pending = bytearray()
    await run_in_threadpool(_write_and_finish, spool, tail)
    return Received(r.fields, spool, r.filename)


def _write_and_finish(spool: Spool, tail: bytes) -> None:
    if tail:
        spool.write(tail)
    spool.finish()
