"""A C-core gRPC client (Python grpcio) calling the CSI services over a unix
socket, the way Python/Ruby/C++ tools and test harnesses do. C-core sends the
percent-encoded socket path as :authority. Prints one line per call."""
import sys

import grpc


def string_field(msg: bytes, number: int) -> str:
    """The first length-delimited field `number` of a protobuf message."""
    i = 0
    while i < len(msg):
        key = msg[i]
        i += 1
        field, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError(f"unexpected wire type {wire}")
        n, shift = 0, 0
        while True:
            b = msg[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if field == number:
            return msg[i : i + n].decode()
        i += n
    return ""


def main() -> None:
    sock = sys.argv[1]
    methods = sys.argv[2:]
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        for method in methods:
            call = channel.unary_unary(
                method,
                request_serializer=lambda _: b"",
                response_deserializer=lambda b: b,
            )
            reply = call(None, timeout=20)
            print(f"{method} ok {string_field(reply, 1)!r}", flush=True)


if __name__ == "__main__":
    main()
