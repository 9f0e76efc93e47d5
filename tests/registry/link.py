"""A TCP relay that behaves like a slow network link: round-trip time, an optional rate
cap, and a count of the connections clients open. It sits in front of the fault proxy
(`harness.py proxy --rtt-ms N [--rate-mbit R]`), below TLS, so a client pays for its TCP
and TLS handshakes as it would on a real link, and a new connection shows as one here.

The model, per direction of each connection:
- bytes read from the sender at time t leave when the link is free (`free_at`, shared by
  every connection in that direction, as on one physical link), take len*8/rate seconds
  to pass the cap, and arrive rtt/2 later;
- a new connection's first client bytes arrive no earlier than one round trip after the
  accept plus rtt/2 (the SYN / SYN-ACK exchange a loopback connect() skips);
- at most QUEUE_CHUNKS reads wait in each direction, so a reader that stops reading
  stops the sender (TCP flow control), instead of the relay buffering a whole blob.

Every accepted connection is logged as one JSON line when it closes:
{"conn": n, "opened": time, "closed": time, "up": bytes, "down": bytes}; `opened` counts
are also kept in memory for `stats()`.
"""

import json
import queue
import socket
import threading
import time

# Bytes per read from either side: one TLS record is 16 KiB; 64 KiB keeps the per-chunk
# Python cost small next to the transfer.
READ_SIZE = 65536
# Chunks waiting per direction: 16 x 64 KiB = 1 MiB, above the bandwidth-delay product of
# 100 Mbit/s x 20 ms (250 KB), so the cap, not the queue, limits throughput.
QUEUE_CHUNKS = 16


class Link:
    """Accepts on 127.0.0.1 (a free port) and relays each connection to `upstream`."""

    def __init__(self, upstream, rtt_ms=20.0, rate_mbit=None, log_path=None):
        self.upstream = upstream
        self.half_rtt = rtt_ms / 2000.0
        self.rtt = rtt_ms / 1000.0
        self.rate = rate_mbit * 1e6 / 8 if rate_mbit else None  # bytes per second
        self.log_path = log_path
        self._lock = threading.Lock()
        self._free_at = {"up": 0.0, "down": 0.0}
        self.opened = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._stopped = threading.Event()

    def serve_forever(self):
        while not self._stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.opened += 1
                n = self.opened
            threading.Thread(target=self._connection, args=(client, n), daemon=True).start()

    def shutdown(self):
        self._stopped.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def stats(self):
        with self._lock:
            return {"opened": self.opened}

    def _departure(self, direction, now, n):
        """When `n` bytes read at `now` have passed the cap (the link's shared clock)."""
        if self.rate is None:
            return now
        with self._lock:
            start = max(now, self._free_at[direction])
            done = start + n / self.rate
            self._free_at[direction] = done
            return done

    def _connection(self, client, n):
        opened = time.time()
        t0 = time.monotonic()
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(None)
        counts = {"up": 0, "down": 0}
        # Client bytes may not arrive before the emulated handshake is over.
        up = threading.Thread(target=self._pipe, args=(client, server, "up", counts, t0 + self.rtt))
        down = threading.Thread(target=self._pipe, args=(server, client, "down", counts, 0.0))
        up.start()
        down.start()
        up.join()
        down.join()
        for s in (client, server):
            try:
                s.close()
            except OSError:
                pass
        if self.log_path:
            rec = {"conn": n, "opened": opened, "closed": time.time(), "up": counts["up"],
                   "down": counts["down"]}
            with self._lock, open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _pipe(self, src, dst, direction, counts, not_before):
        """Read from src, deliver to dst after the link's delay; on EOF or error, pass the
        close on (half-close first, so a response in flight still arrives)."""
        q = queue.Queue(QUEUE_CHUNKS)

        def writer():
            broken = False
            while True:
                item = q.get()
                if item is None:
                    break
                if broken:
                    continue  # keep draining, so the reader never blocks on a full queue
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    dst.sendall(data)
                except OSError:
                    broken = True
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        while True:
            try:
                data = src.recv(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            now = time.monotonic()
            counts[direction] += len(data)
            due = max(self._departure(direction, now, len(data)), not_before) + self.half_rtt
            q.put((due, data))
        q.put(None)
        w.join()
