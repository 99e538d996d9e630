"""hub.merge's pure part: a batch of tagged events becomes one chunk of frames."""

from __future__ import annotations

from hub.cursor import CursorWriter, format_cursor
from hub.events import control_body, encode_body, encode_frame
from hub.merge import _encode, _End


def test_a_batch_encodes_to_the_reference_frames() -> None:
    # _encode builds frames inline for speed; they must be exactly encode_frame's.
    writer = CursorWriter(["echo", "chat"], {"chat": "k3f9q2.4"})
    echo, chat = encode_body("echo", '{"m":"é"}'), encode_body("chat", '{"t":1}')
    gap = control_body("gap", stream="chat", requested="a.1", resumed_from="k3f9q2.2")
    batch = [(1, "0", echo, None), (0, None, gap, None), (0, "k3f9q2.5", chat, b"ignored")]
    chunk, end = _encode(batch, writer, solo=False)
    assert end is None
    assert chunk == (
        encode_frame(echo, format_cursor({"chat": "k3f9q2.4", "echo": "0"}))
        + gap  # a control event carries no id
        + encode_frame(chat, format_cursor({"chat": "k3f9q2.5", "echo": "0"}))
    )


def test_a_lone_topic_uses_the_shared_frame_and_the_end_stops() -> None:
    writer = CursorWriter(["chat"], {})
    shared = b"id: chat:k.1\nevent: chat\ndata: {}\n\n"
    assert _encode([(0, "k.1", b"unused", shared)], writer, solo=True) == (shared, None)
    overflow = control_body("overflow", reason="full")
    end = _End("full")
    chunk, last = _encode([(0, "k.2", b"x", shared), (0, end, overflow, None)], writer, True)
    assert (chunk, last) == (shared + overflow, end)
