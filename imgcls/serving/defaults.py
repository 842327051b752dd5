"""The server's defaults, in one place: `imgcls serve`'s flags, create_app, the micro-batcher and
the request limits all read them here. It imports nothing, so the command line can show them
without loading the server."""

HOST = "127.0.0.1"                     # this machine only; serving beyond it asks for a key and HTTPS
PORT = 8000
MAX_BATCH = 32                         # images per forward pass; 1 turns micro-batching off
MAX_WAIT_MS = 5.0                      # how long the first request of a batch waits for others
QUEUE_SIZE = 256                       # requests waiting before a 503 with Retry-After
MAX_UPLOAD_BYTES = 20 * 1024 * 1024    # all of one request's images together
MAX_PIXELS = 40_000_000                # per image, checked before decoding
