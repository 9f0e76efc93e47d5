"""A threaded HTTP/1.1 server bound to 127.0.0.1, optionally TLS, shared by the token
server and the fault proxy."""

import http.server
import socket
import ssl


def server_tls_context(cert_file, key_file):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def send_body(handler, body, ctype="application/json", extra=()):
    """After the status line: Content-Type, Content-Length, the `extra` headers, and the
    body (not for HEAD). Returns whether the body was sent."""
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in extra:
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command == "HEAD":
        return False
    handler.wfile.write(body)
    return True


class LoopbackServer(http.server.ThreadingHTTPServer):
    """One thread per connection, on 127.0.0.1 (port 0 picks a free port). With `ssl_ctx`
    the TLS handshake runs in the connection's own thread (not in accept()), so a client
    that connects and says nothing blocks no one."""
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, handler, ssl_ctx=None, port=0):
        self.ssl_ctx = ssl_ctx
        super().__init__(("127.0.0.1", port), handler)

    @property
    def port(self):
        return self.server_address[1]

    def finish_request(self, request, client_address):
        request.settimeout(120)
        # As Go's net/http (the registry) does: no Nagle. Without it, a body written after
        # its headers waits for the client's delayed ACK of the headers (40 ms on Linux),
        # which the emulated link (link.py) would add to every response.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_ctx:
            try:
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        try:
            self.RequestHandlerClass(request, client_address, self)
        except (OSError, ValueError):
            pass  # the client went away, or a fault closed the connection under the handler
        finally:
            try:
                request.close()
            except OSError:
                pass

    def shutdown_request(self, request):
        # `request` may be the plain socket whose descriptor wrap_socket() took over.
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        request.close()

    def handle_error(self, request, client_address):
        pass  # connection-level errors are normal here (faults, impatient clients)
