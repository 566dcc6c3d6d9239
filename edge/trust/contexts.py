"""Domain separation for everything the backend key (and the device key, off the event path)
signs: each purpose prepends its own context to the signed bytes.

The backend has ONE Ed25519 key for commands, settlement receipts, sealed templates and claim
tokens. Without a context, bytes valid under one purpose could be presented as another (a
receipt as a command, a sealed blob as a token); with it, a signature made for one purpose never
verifies for another, whatever the bytes look like. Events keep their signature over the bare
canonical JSON (DESIGN §5; the backend ledger and fleet tools verify them that way) and are
signed by device keys, which sign nothing else but the status documents below.
"""

from __future__ import annotations

COMMAND = b"facegate/v1/command\0"
RECEIPT = b"facegate/v1/receipt\0"
SEALED_TEMPLATE = b"facegate/v1/sealed-template\0"
# Kept from before the other contexts existed: tokens already printed on paper stay valid.
CLAIM_TOKEN = b"facegate claim token v1\0"
STATUS = b"facegate/v1/status\0"  # device key: the retained …/status and …/status/state

ALL = (COMMAND, RECEIPT, SEALED_TEMPLATE, CLAIM_TOKEN, STATUS)


def signed_bytes(context: bytes, message: bytes) -> bytes:
    """The exact bytes signed and verified for `message` under `context`."""
    return context + message
