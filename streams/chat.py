from hub import Event, ReceivedAt, topic


class ChatMessage(Event):
    user: str
    text: str
    received_at: ReceivedAt


chat = topic(
    "chat",
    ChatMessage,
    description="Chat messages: POST {user, text}; every subscriber gets them, in order.",
    history=1000,
)
