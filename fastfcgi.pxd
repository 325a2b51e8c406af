# cython: language_level=3
#
# fastfcgi.pxd: the map of the compiled core.  The FastCGI constants, the
# return codes, the typed state of Parser and Writer and the few C functions
# they call.  Other Cython code may ``cimport fastfcgi`` to use them.


# ############################################################################
# Externs  ####################################################################
# ############################################################################

cdef extern from "<sys/socket.h>" nogil:
    # The blocking loop (Connection.read_event) calls these on the fd of a
    # plain socket.socket, without building a bytes object per read.
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    # Connection.send_last: the last output, then the FIN.
    int shutdown(int fd, int how)
    const int SHUT_WR

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <arpa/inet.h>
    #include <fcntl.h>
    #include <unistd.h>

    /* accept() for Connection.accept: close-on-exec as Python's own. */
    static int fastfcgi_accept(int fd, struct sockaddr_storage* addr, socklen_t* len) {
    #if defined(__linux__) && defined(SOCK_CLOEXEC)
        return accept4(fd, (struct sockaddr*)addr, len, SOCK_CLOEXEC);
    #else
        int r = accept(fd, (struct sockaddr*)addr, len);
        if (r >= 0)
            fcntl(r, F_SETFD, FD_CLOEXEC);
        return r;
    #endif
    }
    """
    # Connection.accept and the fd it then works on.
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr_storage:
        sa_family_t ss_family
    struct sockaddr_un:
        sa_family_t sun_family
        char sun_path[108]
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    const int AF_UNIX, AF_INET, AF_INET6, SOCK_STREAM
    const int IPPROTO_TCP, TCP_NODELAY, INET6_ADDRSTRLEN
    int fastfcgi_accept(int fd, sockaddr_storage* addr, socklen_t* len) nogil
    int setsockopt(int fd, int level, int name, const void* value, socklen_t n) nogil
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t n) nogil
    unsigned short ntohs(unsigned short) nogil
    unsigned int ntohl(unsigned int) nogil
    int close(int fd) nogil

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef extern from "<errno.h>" nogil:
    # EAGAIN is in libc.errno; this POSIX twin of it is not.
    const int EWOULDBLOCK

cdef extern from *:
    """
    /* A peer that went away must give us EPIPE (the SEND code), not kill
       the process with SIGPIPE; where the flag does not exist, CPython's
       start-up has already ignored SIGPIPE. */
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    /* Linux: hold a send's data for what follows (Connection.send_last). */
    #ifndef MSG_MORE
    #define MSG_MORE 0
    #endif
    """
    const int MSG_NOSIGNAL
    const int MSG_MORE
    const int MSG_DONTWAIT


# ############################################################################
# Constants  ##################################################################
# ############################################################################
#
# The same values as in fastfcgi_py (DESIGN.md and the FastCGI 1.0 spec);
# Python code sees fastfcgi_py's objects, re-exported by fastfcgi.pyx.

cdef enum:
    # Return codes.  Functions that return one are declared ``except -128``:
    # -1 is EOF, a value, not an error marker.
    OK = 0
    EOF = -1
    IO = -2
    PROTO = -3
    PLEN = -4
    CLEN = -5
    ABORT = -6
    NOREQ = -7
    SEND = -8
    # Not a code: Connection._recv found nothing to read (and was not to wait).
    NOT_YET = 1

cdef enum:
    # Record header and record types (spec 8).
    FCGI_VERSION_1 = 1
    FCGI_HEADER_LEN = 8
    FCGI_MAX_CONTENT = 65535
    FCGI_BEGIN_REQUEST = 1
    FCGI_ABORT_REQUEST = 2
    FCGI_END_REQUEST = 3
    FCGI_PARAMS = 4
    FCGI_STDIN = 5
    FCGI_STDOUT = 6
    FCGI_STDERR = 7
    FCGI_DATA = 8
    FCGI_GET_VALUES = 9
    FCGI_GET_VALUES_RESULT = 10
    FCGI_UNKNOWN_TYPE = 11

cdef enum:
    # Roles and flags of BEGIN_REQUEST (spec 5.1), protocolStatus of
    # END_REQUEST (spec 5.5).
    FCGI_RESPONDER = 1
    FCGI_AUTHORIZER = 2
    FCGI_FILTER = 3
    FCGI_KEEP_CONN = 1
    FCGI_REQUEST_COMPLETE = 0
    FCGI_CANT_MPX_CONN = 1
    FCGI_OVERLOADED = 2
    FCGI_UNKNOWN_ROLE = 3

cdef enum:
    # Private limits, as fastfcgi_py's _CHUNK and _MAX_CL_DIGITS.
    CHUNK = 65528           # content of the records we emit
    MAX_CL_DIGITS = 18      # longest CONTENT_LENGTH accepted
    # The caches of param names and values: slots (a power of two), and
    # the longest string kept.
    STR_CACHE_SIZE = 512
    STR_CACHE_MAX_LEN = 64
    # The blocks of other names in a row that make the last of them the
    # params template: a shape that comes back replaces it within 16
    # requests, and traffic of shapes that never repeat makes one for a
    # block in 16.
    TEMPLATE_AFTER_MISSES = 16
    # Room a params dict is made with for the WSGI environ's own keys
    # (wsgi.*, fastcgi.*, the required CGI ones).
    ENVIRON_ROOM = 16
    # Receive buffer: its first size, and the size past which an emptied
    # buffer is given back.
    BUF_INITIAL = 16384
    BUF_SHRINK = 1048576
    # What Connection.read_event asks of one recv, as fastfcgi_py._RECV_FIRST
    # and _RECV_SIZE (the same reads leave the same bytes unread when a
    # connection fails): the first size, doubled after each read that
    # fills it, up to the last.  The first fits the first buffer.
    RECV_FIRST = 16384
    RECV_SIZE = 262144


# ############################################################################
# Writer framing  #############################################################
# ############################################################################

cdef struct Framer:
    # Cuts a byte stream of known length into records while it is copied.
    unsigned char* p        # where the next byte goes
    Py_ssize_t left         # content bytes still to come, all records
    Py_ssize_t room         # content bytes the open record still takes
    int pad                 # padding owed when the open record is full
    int rtype
    unsigned int request_id


# ############################################################################
# Classes  ####################################################################
# ############################################################################

cdef class _RequestState:
    # Per-request parser state, as fastfcgi_py._RequestState.
    cdef:
        int request_id
        int role
        int flags
        object params                # dict once the PARAMS stream ended
        unsigned char* params_buf    # PARAMS content so far (malloc)
        Py_ssize_t params_len
        Py_ssize_t params_cap
        long long content_length     # -1: no CONTENT_LENGTH given
        long long stdin_seen
        long long data_seen          # FILTER: FCGI_DATA bytes so far
        bint stdin_done
        bint data_done
        bint aborted
        long long excess             # stdin bytes past CONTENT_LENGTH, dropped

    # Append PARAMS content to params_buf (MemoryError).
    cdef int add_params(self, const unsigned char* data, Py_ssize_t n) except -1


cdef class Parser:
    cdef:
        # Unparsed bytes are _buf[_start:_end]; _cap is the allocation.
        unsigned char* _buf
        Py_ssize_t _cap
        Py_ssize_t _start
        Py_ssize_t _end
        bint _eof
        bint _receiving              # a read is filling _buf's free end
        Py_ssize_t _lent             # how much of it get_buffer lent
        int _exports                 # the lent buffer's acquired views
        object _lender               # get_buffer's _LentBuffer
        int _error                   # sticky code, 0 while healthy
        bint _closing                # a request without KEEP_CONN began
        dict _requests               # active request id -> _RequestState
        list _out                    # queued management replies (bytes)
        # Limits as given (the attributes) and as C integers (the checks).
        object _max_param_size
        object _max_params_size
        object _max_body
        long long _c_max_param_size
        long long _c_max_params_size
        long long _c_max_body        # LLONG_MAX for None
        public object max_conns
        public object max_reqs
        public object mpxs_conns

    # Record the sticky code and return it.
    cdef int _fail(self, int code) noexcept
    # Whether a BEGIN_REQUEST now waits for the active request to end.
    cdef bint _holds_next(self) except -1
    # Whether one is buffered and waits (the ``waiting`` property).
    cdef bint _waiting(self) except -1
    # Make room for n more bytes at _end (MemoryError).
    cdef int _reserve(self, Py_ssize_t n) except -1
    # Forget consumed bytes; give a large emptied buffer back.
    cdef void _compact(self) noexcept
    # next_event: consume records up to the next event.
    cdef object _next_event(self)
    # Route one record to its handler; an event, a code or None.
    cdef object _dispatch(self, int rtype, int request_id,
                          const unsigned char* content, Py_ssize_t n)
    # The record handlers (spec 5); each returns an event, a code or None.
    cdef object _on_begin_request(self, int request_id,
                                  const unsigned char* content, Py_ssize_t n)
    cdef object _on_params(self, _RequestState state,
                           const unsigned char* content, Py_ssize_t n)
    cdef object _on_stdin(self, _RequestState state,
                          const unsigned char* content, Py_ssize_t n)
    cdef object _on_data(self, _RequestState state,
                         const unsigned char* content, Py_ssize_t n)
    cdef object _on_get_values(self, const unsigned char* content, Py_ssize_t n)


cdef class Writer:
    pass


cdef class Connection:
    cdef:
        # Accepted here: the fd, and the socket object once asked for.
        # Made from a socket (Connection(sock, ...)): that socket, fd -1.
        int _fd
        int _family
        object _sock
        public object parser
        public object writer
        public object peer
        public object send_file
        public bint drain
        public bint registered
        public bint retiring         # RETIRE_RECORD goes with the last send
        # The demultiplexer's (fastfcgi_py._Demultiplexer): active request
        # id -> Request, and the class it makes them with.
        public object requests
        public object request_class
        public object pending
        # FU's reader: the head of the last request read_request gave.
        public object request_id
        public object role
        public object flags
        public object params
        public int error             # IO or SEND, sticky
        public Py_ssize_t _recv_size # what the next recv asks for

    # The blocking loop: the parser's next event, its replies sent, recv
    # into its buffer; on ``sock`` or, when ``fd`` >= 0, on that fd.
    # Without ``wait`` and no request begun: None once nothing more came.
    cdef object _read_event(self, Parser p, object sock, int fd, bint wait)
    # Send the parser's queued replies; OK or SEND.
    cdef int _send_out(self, Parser p, object sock, int fd) except -128
    # Receive once into the parser's buffer; OK, IO, or NOT_YET (no wait).
    cdef int _recv(self, Parser p, object sock, int fd, bint wait) except -128
    # sendall/send_last on the bare fd.
    cdef _send_fd(self, data, int flags)


cdef class _RequestCore:
    # fastfcgi_py.Request's state (the same names; see its __init__), for
    # fastfcgi.Request, which adds the rest of its methods.
    cdef:
        public object params
        public object request_id
        public object role
        public bint keep_conn
        public object connection
        public object encoding
        public object _buffer
        public bint _stdin_done
        public bint _aborted
        public bint _finished
        public bint _stderr_used
        public bint _stdout_used
        public object _data_buffer
        public bint _data_done
        public object stdout_bytes
        public object _views
        public int _input_error
        public bint _gone
        public object _stdout_head
        public bint _head_open

    # send(data, last): False once the web server went away.
    cdef bint _send(self, object data, bint last) except -1
    # The rest of finish, once the output (with END_REQUEST) is framed.
    cdef int _finish_with(self, object out, Py_ssize_t tail_len) except -1


cdef class _AsyncRequestCore(_RequestCore):
    # fastfcgi_py.AsyncRequest's own state, for fastfcgi.AsyncRequest.
    cdef:
        public object _waiter
        public object _on_stdin_read
        public object task
        public bint _input_broken


cdef class _Response:
    # fastfcgi_py._Response's state, and the head checked by start_response
    # in the form _finish writes (None when the writer is not ours).
    cdef:
        public object request
        public object status
        public object headers
        public bint head_sent
        public bint head_only
        object _head_bytes
        list _head_items
        Py_ssize_t _head_len
