"""Two pages chat: the ack promise resolves once the message is stored, the recipient page
gets it, and a page that was offline during a send gets it on reconnect, once."""

from broker.protocols.chat import private_conversation_id
from broker.store import chat_sql as chat_store
from tests.support.browser import WAIT_MS, make_jwt, wait

START = """([url, token]) => {
  const client = new broker.BrokerClient(url, { token, minDelay: 20, maxDelay: 100 });
  window.client = client;
  window.chats = [];
  window.replays = 0;
  client.on("chat", (message) => chats.push(message));
  client.on("message", (message) => { if (message.type === "offline_complete") replays++; });
  client.connect();
}"""


def stored_messages(broker, conversation):
    messages, _ = broker.run(chat_store.history, broker.handle.broker.store, conversation, None, 50)
    return [message.decode() for message in messages]


def test_two_pages_chat_with_acks_and_an_offline_page_catches_up_once(start_broker, open_page, browser):
    broker = start_broker()
    alice = open_page(broker)
    bob_context = browser.new_context()  # bob's own browser profile: it goes offline alone
    bob_context.set_default_timeout(WAIT_MS)
    try:
        bob = open_page(broker, in_context=bob_context)
        alice.evaluate(START, [broker.ws, make_jwt("alice")])
        bob.evaluate(START, [broker.ws, make_jwt("bob")])
        wait(alice, "client.status === 'connected'")
        wait(bob, "client.status === 'connected' && replays === 1")

        ack = alice.evaluate("client.sendChat({ chatType: 2, recvId: 'bob', content: 'hello bob' })")
        conversation = private_conversation_id("alice", "bob")
        assert ack["type"] == "chat_ack" and ack["conversationId"] == conversation
        assert ack["clientMsgId"]  # the client's id, echoed
        # resolved only after the broker stored it
        assert any('"hello bob"' in message and f'"msgId":{ack["msgId"]}' in message
                   for message in stored_messages(broker, conversation))
        wait(bob, "chats.length === 1")
        assert bob.evaluate("chats[0].content") == "hello bob"
        assert bob.evaluate("chats[0].msgId") == ack["msgId"]

        # bob's network goes away: the client closes and waits for it to come back
        bob_context.set_offline(True)
        wait(bob, "client.status === 'reconnecting' && !client.online")
        second = alice.evaluate("client.sendChat({ chatType: 2, recvId: 'bob', content: 'while you were away' })")
        bob_context.set_offline(False)
        wait(bob, "client.status === 'connected' && replays === 2")
        wait(bob, "chats.length >= 2")
        assert [(m["content"], m["msgId"]) for m in bob.evaluate("chats")] == [
            ("hello bob", ack["msgId"]), ("while you were away", second["msgId"]),
        ]
        # once: a later message arrives right after it, with nothing repeated in between
        third = alice.evaluate("client.sendChat({ chatType: 2, recvId: 'bob', content: 'third' })")
        wait(bob, "chats.length >= 3")
        assert [m["msgId"] for m in bob.evaluate("chats")] == [ack["msgId"], second["msgId"], third["msgId"]]
    finally:
        bob_context.close()


def test_sends_while_reconnecting_wait_in_the_outbox_and_are_stored_once(start_broker, open_page):
    broker = start_broker()
    alice, bob = open_page(broker), open_page(broker)
    alice.evaluate(START, [broker.ws, make_jwt("alice")])
    bob.evaluate(START, [broker.ws, make_jwt("bob")])
    wait(alice, "client.status === 'connected'")
    wait(bob, "client.status === 'connected'")
    # sent, then the connection drops before the ack can arrive: the send is retried
    # after the reconnect with the same clientMsgId, and the broker stores it once
    alice.evaluate("""() => {
      window.acks = [];
      const sent = client.sendChat({ chatType: 2, recvId: 'bob', content: 'first', clientMsgId: 'retry-1' });
      client.drop();
      const queued = client.sendChat({ chatType: 2, recvId: 'bob', content: 'queued' });
      Promise.all([sent, queued]).then((both) => { window.acks = both; });
    }""")
    wait(alice, "acks.length === 2")
    acks = alice.evaluate("acks")
    assert acks[0]["clientMsgId"] == "retry-1" and acks[1]["msgId"] > acks[0]["msgId"]
    wait(bob, "chats.length === 2")
    assert [m["content"] for m in bob.evaluate("chats")] == ["first", "queued"]
    conversation = private_conversation_id("alice", "bob")
    stored = stored_messages(broker, conversation)
    assert sum('"first"' in message for message in stored) == 1
    # history paging and read receipts
    page = alice.evaluate(f"client.history('{conversation}', {{ limit: 1 }})")
    assert page["hasMore"] is True and [m["content"] for m in page["messages"]] == ["queued"]
    older = alice.evaluate(f"client.history('{conversation}', {{ beforeMsgId: {acks[1]['msgId']}, limit: 5 }})")
    assert older["hasMore"] is False and [m["content"] for m in older["messages"]] == ["first"]
    alice.evaluate("() => { window.receipts = []; client.on('read', (r) => receipts.push(r)); }")
    bob.evaluate(f"client.markRead('{conversation}', {acks[1]['msgId']})")
    wait(alice, "receipts.length === 1")
    assert alice.evaluate("receipts[0]")["userId"] == "bob"
