"""Pure frame codec: a 4-byte big-endian length, then one msgpack map (SPEC section 5).

No sockets, no loop, no clock: bytes in, messages out. The connection module drives it.
"""

from __future__ import annotations

import msgpack

from asyncray._wire.messages import Message, ProtocolError, from_wire

# A control frame never carries bulk data: values over ~100 KiB go through the object store,
# so 64 MiB is generous and still bounds what a hostile peer can make us buffer.
MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER_BYTES = 4


def encode(msg: Message) -> bytes:
    """Return the frame for one message: length prefix plus msgpack body."""
    try:
        body: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{type(msg).__name__} cannot be encoded: {exc}") from exc
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"{type(msg).__name__} frame is {len(body)} bytes, over the {MAX_FRAME_BYTES}-byte limit"
        )
    return len(body).to_bytes(_HEADER_BYTES, "big") + body


class FrameDecoder:
    """Buffers byte chunks of any size and returns the complete messages decoded so far.

    After a ProtocolError the decoder is poisoned: the stream is out of sync, so the only
    safe thing to do is close the connection.
    """

    __slots__ = ("_broken", "_buf", "_max")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(
        self, data: bytes | bytearray | memoryview, *, max_messages: int | None = None, max_frame_bytes: int | None = None
    ) -> list[Message]:
        """Add bytes; return every message completed by them, in order.

        ``max_messages`` stops after that many (the rest stays buffered for the next call);
        ``max_frame_bytes`` lowers the size limit for this call (a peer not yet authenticated
        may not make us buffer much).

        Raises:
            ProtocolError: the declared length is over the limit, the body is not msgpack,
                or the map is not a known message. The connection must be closed.
        """
        if self._broken:
            raise ProtocolError("decoder already failed; close the connection")
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        n = len(buf)
        limit = self._max if max_frame_bytes is None else min(self._max, max_frame_bytes)
        try:
            while n - pos >= _HEADER_BYTES and (max_messages is None or len(out) < max_messages):
                length = int.from_bytes(buf[pos : pos + _HEADER_BYTES], "big")
                if length > limit:
                    raise ProtocolError(f"frame declares {length} bytes, over the {limit}-byte limit")
                end = pos + _HEADER_BYTES + length
                if end > n:
                    break
                try:
                    obj = msgpack.unpackb(buf[pos + _HEADER_BYTES : end], raw=False)
                except Exception as exc:  # msgpack raises several unrelated types
                    raise ProtocolError(f"undecodable frame body: {exc}") from exc
                out.append(from_wire(obj))
                pos = end
        except ProtocolError:
            self._broken = True
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return out
