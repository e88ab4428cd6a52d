from app.domain.llm import ModelMessage
from app.infra.llm import ScriptedChatModel


async def test_echoes_the_last_user_message_word_by_word() -> None:
    messages = [
        ModelMessage("system", "Be brief."),
        ModelMessage("user", "first question"),
        ModelMessage("assistant", "first answer"),
        ModelMessage("user", "Hello brave world"),
    ]
    pieces = [piece async for piece in ScriptedChatModel().stream(messages)]
    assert pieces == ["Hello ", "brave ", "world"]


async def test_without_a_user_message_it_says_nothing() -> None:
    pieces = [p async for p in ScriptedChatModel().stream([ModelMessage("system", "x")])]
    assert pieces == []
