"""Chat rooms: one topic per room, made as it is first used (`room/lobby`, `room/kitchen`)."""

from hub import topic

from .chat import ChatMessage

room = topic(
    "room",
    ChatMessage,
    key=str,
    history=100,
    description="Chat rooms, one topic per room: POST {user, text} to "
    "/streams/room/<name>/events, subscribe to room/<name>.",
)
