"""Sans-I/O parsers for the handshake messages that reveal which service a flow talks to.

``tls`` reads the TLS ClientHello (server_name, ALPN, versions; RFC 8446, RFC 6066, RFC 7301)
from a TCP byte stream or from QUIC CRYPTO data; ``quic`` removes QUIC Initial packet
protection (RFC 9001, RFC 9369) to reach that ClientHello. Both take bytes and return frozen
dataclasses, ``None`` for "need more bytes", or raise a ``ValueError`` subclass for malformed
input. Neither reads files, sockets or the clock.
"""
