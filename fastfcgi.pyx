# cython: language_level=3, embedsignature=True
"""fastfcgi: the compiled core (Parser, Writer, and a request's hot path) with fastfcgi_py's whole API. See `fastfcgi_py`."""

# Table of contents: ``grep -n '^# .*####' fastfcgi.pyx``.  The declarations
# (fields, constants, externs) are in fastfcgi.pxd.
#
# fastfcgi_py.py is the reference: Parser and Writer here give the same
# events, codes, bytes and exceptions for the same input, checked in the same
# order, and the differential tests hold them to it.  Only the machinery
# differs: a C receive buffer, header arithmetic in C, params decoded by a C
# loop straight into a dict, and output written into one bytes object.
# Connection, Request and the WSGI gateway keep the pure core's code for
# everything but the per-request steps the profile showed hot (see their
# sections); the gateways and servers are fastfcgi_py's classes, given this
# module as their core.

cimport cython
from cpython.buffer cimport (PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release,
                             PyObject_CheckBuffer, PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_SetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.long cimport (PyLong_AsLongAndOverflow,
                           PyLong_AsLongLongAndOverflow,
                           PyLong_AsUnsignedLongLongMask, PyLong_CheckExact)
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport (PyUnicode_1BYTE_KIND, PyUnicode_DATA,
                              PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8,
                              PyUnicode_FromOrdinal,
                              PyUnicode_GET_LENGTH, PyUnicode_KIND,
                              PyUnicode_READ)
from libc.errno cimport EAGAIN, EBADF, EINTR, errno
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

import math as _math
import os as _os
import socket as _socket
import struct as _struct
import sys as _sys

import fastfcgi_py as _py
from fastfcgi_py import (DEFAULT_MAX_PARAM_SIZE, DEFAULT_MAX_PARAMS_SIZE,
                         encode_params)


##############################################################################
# The rest of the API  ########################################################
##############################################################################
#
# Everything but the compiled classes is fastfcgi_py's own object, so
# ``import fastfcgi`` gives the whole API (names added to fastfcgi_py.__all__
# later come along).  Cython puts the cdef classes (Parser, Writer) in the
# module dict before this code runs, so skipping the names already defined
# keeps the compiled ones.

__version__ = _py.__version__
__all__ = list(_py.__all__)
CORE = "compiled"


def _reexport(namespace):
    for name in _py.__all__:
        if name not in namespace:
            namespace[name] = getattr(_py, name)


_reexport(globals())
del _reexport


##############################################################################
# Records  ####################################################################
##############################################################################
#
# Record framing in C (spec 3.3): an 8-byte header, the content, zero padding
# to a multiple of 8.  Writers size the output first, allocate one bytes
# object and write into it; nothing else may hold that object meanwhile.

# Slow paths delegate to struct so that odd arguments (bool, float, objects
# with __index__) fail or pass exactly as in the pure core's struct.pack.
_H = _struct.Struct("!H")
_B = _struct.Struct("!B")
_L = _struct.Struct("!L")


cdef inline unsigned char* _put_header(unsigned char* p, int rtype,
                                       unsigned int request_id, Py_ssize_t n,
                                       int pad) noexcept:
    p[0] = FCGI_VERSION_1
    p[1] = <unsigned char>rtype
    p[2] = <unsigned char>(request_id >> 8)
    p[3] = <unsigned char>request_id
    p[4] = <unsigned char>(n >> 8)
    p[5] = <unsigned char>n
    p[6] = <unsigned char>pad
    p[7] = 0
    return p + FCGI_HEADER_LEN


cdef inline unsigned char* _put_end_body(unsigned char* p,
                                         unsigned long long app_status,
                                         int protocol_status) noexcept:
    # FCGI_EndRequestBody (spec 5.5): appStatus (4 bytes), protocolStatus,
    # 3 reserved bytes.
    p[0] = <unsigned char>(app_status >> 24)
    p[1] = <unsigned char>(app_status >> 16)
    p[2] = <unsigned char>(app_status >> 8)
    p[3] = <unsigned char>app_status
    p[4] = <unsigned char>protocol_status
    p[5] = p[6] = p[7] = 0
    return p + 8


cdef bytes _record(int rtype, unsigned int request_id, bytes content):
    # One record, as fastfcgi_py._record.
    cdef Py_ssize_t n = len(content)
    cdef int pad = <int>(-n & 7)
    cdef unsigned char* p
    if n > FCGI_MAX_CONTENT:
        # The pure core's header pack fails the same way.
        raise _struct.error("'H' format requires 0 <= number <= 65535")
    out = PyBytes_FromStringAndSize(NULL, FCGI_HEADER_LEN + n + pad)
    p = _put_header(<unsigned char*>PyBytes_AS_STRING(out), rtype, request_id,
                    n, pad)
    memcpy(p, PyBytes_AS_STRING(content), n)
    memset(p + n, 0, pad)
    return out


cdef bytes _end_request_record(unsigned int request_id,
                               unsigned long long app_status,
                               int protocol_status):
    out = PyBytes_FromStringAndSize(NULL, 16)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    _put_end_body(_put_header(p, FCGI_END_REQUEST, request_id, 8, 0),
                  app_status, protocol_status)
    return out


cdef bytes _unknown_type_record(int rtype):
    # FCGI_UnknownTypeBody (spec 4.2): the type, 7 reserved bytes.
    out = PyBytes_FromStringAndSize(NULL, 16)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    p = _put_header(p, FCGI_UNKNOWN_TYPE, 0, 8, 0)
    p[0] = <unsigned char>rtype
    memset(p + 1, 0, 7)
    return out


@cython.cdivision(True)
cdef inline Py_ssize_t _framed_size(Py_ssize_t n) noexcept:
    # The size of the records carrying n content bytes, CHUNK per record;
    # CHUNK is a multiple of 8, so only the last record is padded.
    cdef Py_ssize_t full = n // CHUNK
    cdef Py_ssize_t rest = n - full * CHUNK
    if rest:
        return n + FCGI_HEADER_LEN * (full + 1) + (-rest & 7)
    return n + FCGI_HEADER_LEN * full


# A Framer cuts a stream of known length into records while copying it in,
# so a response made of a head (several str) and a body crosses record
# boundaries without first being joined.  Raw mode (no records) writes the
# head alone.

cdef inline void _framer_init(Framer* f, unsigned char* p, int rtype,
                              unsigned int request_id,
                              Py_ssize_t total) noexcept:
    f.p = p
    f.left = total
    f.room = 0
    f.pad = 0
    f.rtype = rtype
    f.request_id = request_id


cdef inline void _framer_init_raw(Framer* f, unsigned char* p) noexcept:
    f.p = p
    f.left = f.room = PY_SSIZE_T_MAX
    f.pad = 0


cdef void _framer_put(Framer* f, const char* src, Py_ssize_t n) noexcept:
    cdef Py_ssize_t take
    while n > 0:
        if f.room == 0:
            # Open the next record: CHUNK bytes, or all that is left.
            take = f.left if f.left < CHUNK else CHUNK
            f.pad = <int>(-take & 7)
            f.p = _put_header(f.p, f.rtype, f.request_id, take, f.pad)
            f.room = take
        take = n if n < f.room else f.room
        memcpy(f.p, src, take)
        f.p += take
        src += take
        n -= take
        f.room -= take
        f.left -= take
        if f.room == 0 and f.pad:
            memset(f.p, 0, f.pad)
            f.p += f.pad


cdef void _framer_put_str(Framer* f, str text) noexcept:
    # Validated text is latin-1, which CPython stores one byte per
    # character (PEP 393), so it is copied as it is.
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    cdef char c
    if kind == PyUnicode_1BYTE_KIND:
        _framer_put(f, <const char*>data, n)
        return
    for i in range(n):          # a wider str holding latin-1 only
        c = <char>PyUnicode_READ(kind, data, i)
        _framer_put(f, &c, 1)


##############################################################################
# Argument checks  ############################################################
##############################################################################
#
# The pure core checks ``0 <= x <= top`` (ValueError, or TypeError from the
# comparison) and leaves the integer conversion to struct.pack, which runs
# later: an in-range float passes the check and fails when packed.  So the
# check returns the value, or -1 for "in range but not an int", and _packed
# converts that one through struct at the point where the pure core packs.

cdef long _check_range(object value, long top, str what) except -2:
    cdef int overflow = 0
    cdef long v
    if PyLong_CheckExact(value):
        v = PyLong_AsLongAndOverflow(value, &overflow)
        if not overflow and 0 <= v <= top:
            return v
    elif 0 <= value <= top:
        return -1
    raise ValueError("%s out of range: %r" % (what, value))


cdef long _packed(object value, long checked, object fmt) except -2:
    if checked >= 0:
        return checked
    return fmt.unpack(fmt.pack(value))[0]


cdef long long _app_status32(object app_status) except -1:
    # The exit code modulo 2**32, as ``app_status & 0xFFFFFFFF`` packed "!L".
    if PyLong_CheckExact(app_status):
        return PyLong_AsUnsignedLongLongMask(app_status) & 0xFFFFFFFF
    return _L.unpack(_L.pack(app_status & 0xFFFFFFFF))[0]


cdef long long _c_limit(object value) except? -1:
    # A limit as the C integer the parser compares with: None, NaN and
    # anything from LLONG_MAX up mean no limit; a fraction acts as its floor,
    # since only integers are compared with it.
    cdef int overflow = 0
    cdef long long v
    if value is None:
        return LLONG_MAX
    if PyLong_CheckExact(value):
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return LLONG_MAX if overflow > 0 else LLONG_MIN
        return v
    if value != value or value >= LLONG_MAX:
        return LLONG_MAX
    if value <= LLONG_MIN:
        return LLONG_MIN
    return _math.floor(value)


cdef int _try_buffer(object data, Py_buffer* view) except -1:
    # 1 with view filled (the caller releases it), or 0, with no exception
    # set, when data has no contiguous buffer.
    if not PyObject_CheckBuffer(data):
        return 0
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except Exception:
        return 0
    return 1


cdef int _get_data(object data, Py_buffer* view) except -1:
    # Fill view with the bytes fastfcgi_py's _as_bytes(data) gives: those of
    # a contiguous buffer, else of bytes(memoryview(data)), whose TypeError
    # for a non-bytes-like object is the pure core's.
    if not _try_buffer(data, view):
        PyObject_GetBuffer(bytes(memoryview(data)), view, PyBUF_SIMPLE)
    return 0


cdef object _as_bytes(object data):
    return data if type(data) is bytes else bytes(memoryview(data))


##############################################################################
# Params  #####################################################################
##############################################################################
#
# A name-value block (spec 3.4) becomes a dict of latin-1 str in one C loop.
# Three things make it cheap:
#
# * The dict is created at its final size (one quick pass counts the pairs),
#   so it is not resized three times on the way to nginx's thirty-odd
#   params.  _PyDict_NewPresized is CPython's, used as Cython itself uses
#   it; elsewhere a plain dict is made.
# * Requests repeat the same names (fastcgi_params, the usual headers) and
#   many short values ("GET", "HTTP/1.1", the server's address), so short
#   strings are first looked up in a small cache: a hit saves the allocation
#   and, since a str keeps its hash, the hashing when it goes into the dict.
#   Each cache is a fixed table whose slot keeps the last string hashed to
#   it, so its memory is bounded whatever the peer sends.
# * A web server sends the same names in the same order request after
#   request (its fastcgi_params, then the headers a client sends), and
#   most values again.  A recent request's dict is kept as a template: a
#   block whose names are the template's, pair for pair, becomes a copy of
#   it (one copy of the table, the names' hashes and all) with only the
#   changed values set.  A block of other names is decoded pair by pair;
#   the 16th such block in a row becomes the template.  The template is
#   never handed out (the dict a request gets is its own), and it does not
#   keep a request's credentials.

cdef extern from *:
    """
    #if defined(PYPY_VERSION) || PY_VERSION_HEX >= 0x030E0000
    #define fastfcgi_new_dict(n) PyDict_New()
    #else
    #define fastfcgi_new_dict(n) _PyDict_NewPresized(n)
    #endif
    """
    dict _new_dict "fastfcgi_new_dict" (Py_ssize_t n)


cdef PyObject* _name_cache[STR_CACHE_SIZE]      # owned references or NULL
cdef PyObject* _value_cache[STR_CACHE_SIZE]


cdef inline size_t _slot(const unsigned char* p, Py_ssize_t n) noexcept:
    # A cache slot from the length and the first and last 8 bytes: constant
    # time, and enough to tell apart the strings a web server repeats.
    cdef uint64_t head = 0, tail = 0
    if n >= 8:
        memcpy(&head, p, 8)
        memcpy(&tail, p + n - 8, 8)
    else:
        memcpy(&head, p, <size_t>n)
    head = (head ^ (tail * 0xC2B2AE3D27D4EB4Full) ^ <uint64_t>n) * 0x9E3779B97F4A7C15ull
    return <size_t>(head >> 40) & (STR_CACHE_SIZE - 1)


cdef object _cached_latin1(PyObject** cache, const unsigned char* p,
                           Py_ssize_t n):
    cdef size_t h
    cdef PyObject* cached
    if n > STR_CACHE_MAX_LEN:
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    h = _slot(p, n)
    cached = cache[h]
    # A str decoded from latin-1 is stored one byte per character.
    if (cached != NULL and PyUnicode_GET_LENGTH(<object>cached) == n
            and memcmp(PyUnicode_DATA(<object>cached), p, <size_t>n) == 0):
        return <object>cached
    text = PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    Py_INCREF(text)
    Py_XDECREF(cached)
    cache[h] = <PyObject*>text
    return text


# The names the servers and applications look up are seeded as the
# interned str a literal "PATH_INFO" is, so a lookup in the params (or in
# an environ or scope built from them) finds its key by identity instead of
# comparing the characters: about 100 instructions each under callgrind.
cdef int _seed_names(names) except -1:
    cdef size_t h
    for name in names:
        name = _sys.intern(name)
        raw = name.encode("latin-1")
        h = _slot(<const unsigned char*>PyBytes_AS_STRING(raw), len(raw))
        Py_INCREF(name)
        Py_XDECREF(_name_cache[h])
        _name_cache[h] = <PyObject*>name
    return 0


_seed_names((
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "QUERY_STRING",
    "SERVER_PROTOCOL", "HTTPS", "REQUEST_SCHEME", "REMOTE_ADDR", "REMOTE_PORT",
    "SERVER_ADDR", "SERVER_NAME", "SERVER_PORT", "CONTENT_TYPE", "CONTENT_LENGTH",
    "HTTP_HOST", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_COOKIE",
    "HTTP_USER_AGENT", "HTTP_REFERER", "HTTP_X_REQUEST_ID", "DOCUMENT_ROOT",
    "REMOTE_USER", "AUTH_TYPE", "GATEWAY_INTERFACE"))


cdef inline long long _nv_length(const unsigned char* data, Py_ssize_t* i,
                                 Py_ssize_t end) noexcept:
    # The length at data[*i], advancing *i past it: one byte below 128,
    # else four with the top bit set; -1 when those four run past end.
    cdef Py_ssize_t at = i[0]
    cdef long long n = data[at]
    if not n & 0x80:
        i[0] = at + 1
        return n
    if at + 4 > end:
        return -1
    i[0] = at + 4
    return ((n & 0x7F) << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]


cdef Py_ssize_t _count_params(const unsigned char* data, Py_ssize_t end, tuple names,
                             bint* same) noexcept:
    # How many well-formed pairs the block starts with: the dict's size.
    # With ``names``, whether they are the pairs' names, one for one (*same).
    cdef Py_ssize_t i = 0, count = 0
    cdef Py_ssize_t n_names = len(names) if names is not None else -1
    cdef long long n, v
    same[0] = names is not None
    while i < end:
        n = _nv_length(data, &i, end)
        if n < 0 or i >= end:
            break
        v = _nv_length(data, &i, end)
        if v < 0 or n + v > end - i:
            break
        if same[0] and (count >= n_names or not _str_is(
                <object>PyTuple_GET_ITEM(names, count), data + i, <Py_ssize_t>n)):
            same[0] = False
        i += n + v
        count += 1
    if count != n_names:
        same[0] = False
    return count


cdef inline int _pair_lengths(const unsigned char* data, Py_ssize_t* i, Py_ssize_t end,
                              long long max_size, long long* n, long long* v) noexcept:
    # The name and value lengths of the pair at data[*i], *i past them: 0,
    # or the code PROTO or PLEN, checked in fastfcgi_py._decode_params'
    # order: name length, value length, the limit, then the bounds.
    n[0] = _nv_length(data, i, end)
    if n[0] < 0 or i[0] >= end:
        return PROTO
    v[0] = _nv_length(data, i, end)
    if v[0] < 0:
        return PROTO
    if n[0] > max_size or v[0] > max_size:
        return PLEN
    if n[0] + v[0] > end - i[0]:
        return PROTO
    return 0


cdef object _decode_params(const unsigned char* data, Py_ssize_t end,
                           long long max_size, Py_ssize_t count=-1):
    # The dict of a complete block, or the code PLEN or PROTO (see
    # _pair_lengths).  ``count``: _count_params, when known.
    cdef Py_ssize_t i = 0
    cdef long long n, v
    cdef int code
    cdef bint same
    if count < 0:
        count = _count_params(data, end, None, &same)
    # Sized for the keys WSGIGateway.environ adds to its copy too (the
    # copy keeps the table's size): building the environ never resizes.
    cdef dict params = _new_dict(count + ENVIRON_ROOM)
    while i < end:
        code = _pair_lengths(data, &i, end, max_size, &n, &v)
        if code:
            return code
        PyDict_SetItem(params, _cached_latin1(_name_cache, data + i, <Py_ssize_t>n),
                       _cached_latin1(_value_cache, data + i + n, <Py_ssize_t>v))
        i += n + v
    return params


# The template: (its dict, never changed; the block's names, pair by pair;
# the values to compare, pair by pair, None where the pair is always set).
cdef tuple _template = None
cdef int _template_misses = 0       # blocks of other names since it last matched
# Values the template does not keep (its dict has "" for them; the pairs
# are always set): a request's credentials, which no other needs.
cdef frozenset _UNKEPT = frozenset(("HTTP_COOKIE", "HTTP_AUTHORIZATION",
                                    "HTTP_PROXY_AUTHORIZATION"))


cdef inline bint _str_is(object text, const unsigned char* p, Py_ssize_t n) noexcept:
    # Whether ``text``, a str the params were decoded into (one byte a
    # character, as latin-1 decodes), is p[:n].
    return (PyUnicode_GET_LENGTH(text) == n and
            memcmp(PyUnicode_DATA(text), p, <size_t>n) == 0)


cdef tuple _new_template(const unsigned char* data, Py_ssize_t end, dict params,
                         Py_ssize_t count):
    # The template of a block of ``count`` well-formed pairs, decoded into
    # ``params``.  A name's later pairs are always set, so that its last
    # value wins, as in a decoded block.
    cdef Py_ssize_t i = 0, k
    cdef long long n, v
    cdef dict kept = params.copy()
    cdef set seen = set()
    cdef list names = []
    cdef list values = []
    for k in range(count):
        n = _nv_length(data, &i, end)
        v = _nv_length(data, &i, end)
        name = _cached_latin1(_name_cache, data + i, <Py_ssize_t>n)
        value = _cached_latin1(_value_cache, data + i + n, <Py_ssize_t>v)
        if name in _UNKEPT:
            kept[name] = ""
            value = None
        elif name in seen:
            value = None
        seen.add(name)
        names.append(name)
        values.append(value)
        i += n + v
    return (kept, tuple(names), tuple(values))


def _forget_params_template():
    """Drop the params template: the next request's block makes one (for
    the tests, which start from none)."""
    global _template, _template_misses
    _template = None
    _template_misses = 0


cdef object _decode_request_params(const unsigned char* data, Py_ssize_t end,
                                   long long max_size):
    # _decode_params of a request's block, through the template when its
    # names are the template's (see the section comment).
    global _template, _template_misses
    cdef Py_ssize_t i = 0, k = 0
    cdef long long n, v
    cdef int code
    cdef bint same = False
    cdef PyObject* compared
    template = _template        # held here, whatever replaces it meanwhile
    names = template[1] if template is not None else None
    cdef Py_ssize_t count = _count_params(data, end, names, &same)
    if not same:
        params = _decode_params(data, end, max_size, count)
        if _template_misses < TEMPLATE_AFTER_MISSES:
            _template_misses += 1
        if (template is None or _template_misses == TEMPLATE_AFTER_MISSES) and \
                type(params) is dict:
            _template = _new_template(data, end, params, count)
            _template_misses = 0
        return params
    _template_misses = 0
    params = (<dict>template[0]).copy()
    values = template[2]
    # Checked as _decode_params checks: the limit may be another parser's,
    # and bytes may follow the pairs.
    while i < end:
        code = _pair_lengths(data, &i, end, max_size, &n, &v)
        if code:
            return code
        compared = PyTuple_GET_ITEM(values, k)
        if <object>compared is None or not _str_is(<object>compared, data + i + n,
                                                   <Py_ssize_t>v):
            PyDict_SetItem(params, <object>PyTuple_GET_ITEM(names, k),
                           _cached_latin1(_value_cache, data + i + n, <Py_ssize_t>v))
        i += n + v
        k += 1
    return params


cdef long long _content_length(str text) except -2:
    # CONTENT_LENGTH as a number, or -1 unless it is 1 to MAX_CL_DIGITS
    # ASCII digits (the pure core: ``cl.strip("0123456789")`` then int()).
    cdef long long n = 0
    cdef Py_UCS4 c
    if len(text) > MAX_CL_DIGITS:
        return -1
    for c in text:
        if not u'0' <= c <= u'9':
            return -1
        n = n * 10 + (<long>c - 48)
    return n


##############################################################################
# Parser  #####################################################################
##############################################################################
#
# The state machine of fastfcgi_py.Parser (its section comment is the theory
# of operation), with its state in C: the receive buffer is malloc'd and
# consumed in place, records are framed by header arithmetic, and the
# record-type dispatch is a switch.  Handlers return what the pure ones do:
# an event tuple, a code (through _fail), or None to go on.

@cython.auto_pickle(False)
cdef class _RequestState:
    """Per-request parser state. See `fastfcgi_py.Parser`."""

    def __dealloc__(self):
        free(self.params_buf)

    cdef int add_params(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* buf
        if self.params_len + n > self.params_cap:
            cap = max(self.params_cap * 2, self.params_len + n)
            buf = <unsigned char*>realloc(self.params_buf, cap)
            if buf == NULL:
                raise MemoryError()
            self.params_buf = buf
            self.params_cap = cap
        memcpy(self.params_buf + self.params_len, data, n)
        self.params_len += n
        return 0


@cython.final
@cython.auto_pickle(False)
cdef class _LentBuffer:
    """What Parser.get_buffer gives: a writable buffer on the parser's own
    receive buffer (asyncio reads straight into it)."""

    cdef Parser parser

    def __len__(self):
        return self.parser._lent

    def __getbuffer__(self, Py_buffer* view, int flags):
        cdef Parser p = self.parser
        if not p._lent:
            raise BufferError("nothing is lent: call Parser.get_buffer() first")
        PyBuffer_FillInfo(view, self, p._buf + p._end, p._lent, 0, flags)
        p._exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self.parser._exports -= 1


cdef object _abort(_RequestState state, int code):
    # A per-request failure: its input is over (see fastfcgi_py's Parser).
    state.aborted = True
    free(state.params_buf)
    state.params_buf = NULL
    state.params_len = state.params_cap = 0
    return (FCGI_ABORT_REQUEST, state.request_id, code)


cdef bint _input_complete(_RequestState state) noexcept:
    # As fastfcgi_py._input_complete.
    if state.aborted:
        return True
    if state.params is None:
        return False
    if state.role == FCGI_AUTHORIZER:
        return True                 # spec 6.3: an authorizer gets no stdin
    return state.stdin_done and (state.data_done or state.role != FCGI_FILTER)


@cython.auto_pickle(False)
cdef class Parser:
    """Parser(*, max_param_size=DEFAULT_MAX_PARAM_SIZE, max_params_size=DEFAULT_MAX_PARAMS_SIZE, max_body=None, max_conns=1, max_reqs=1, mpxs_conns=False)

    Sans-IO FastCGI record parser for the application side. See `fastfcgi_py.Parser`."""

    def __cinit__(self):
        # __init__ sets the rest; this much keeps a Parser whose __init__
        # was never run from touching NULL or None.
        self._buf = <unsigned char*>malloc(BUF_INITIAL)
        if self._buf == NULL:
            raise MemoryError()
        self._cap = BUF_INITIAL
        self._requests = {}
        self._out = []
        self._c_max_param_size = self._c_max_params_size = 0
        self._c_max_body = LLONG_MAX

    def __dealloc__(self):
        free(self._buf)

    # Cython (3.0 to 3.3) would embed this signature in the class docstring
    # with the "*" after the first argument; the docstring has it right.
    @cython.embedsignature(False)
    def __init__(self, *, max_param_size=DEFAULT_MAX_PARAM_SIZE,
                 max_params_size=DEFAULT_MAX_PARAMS_SIZE, max_body=None,
                 max_conns=1, max_reqs=1, mpxs_conns=False):
        if max_param_size < 0 or max_params_size < 0:
            raise ValueError("limits must not be negative")
        if max_body is not None and max_body < 0:
            raise ValueError("max_body must be None or >= 0")
        # What the limits' setters do, without a Python call each: a
        # connection makes a Parser.
        self._c_max_param_size = _c_limit(max_param_size)
        self._max_param_size = max_param_size
        self._c_max_params_size = _c_limit(max_params_size)
        self._max_params_size = max_params_size
        self._c_max_body = _c_limit(max_body)
        self._max_body = max_body
        self.max_conns = max_conns
        self.max_reqs = max_reqs
        self.mpxs_conns = bool(mpxs_conns)
        self._start = self._end = 0
        self._eof = False
        self._error = 0
        self._requests = {}
        self._out = []
        self._closing = False

    # -- limits: the attribute as given, its C copy for the checks --------

    @property
    def max_param_size(self):
        """Longest param name or value. See `fastfcgi_py.Parser`."""
        return self._max_param_size

    @max_param_size.setter
    def max_param_size(self, value):
        self._c_max_param_size = _c_limit(value)
        self._max_param_size = value

    @property
    def max_params_size(self):
        """Most bytes of all params of a request. See `fastfcgi_py.Parser`."""
        return self._max_params_size

    @max_params_size.setter
    def max_params_size(self, value):
        self._c_max_params_size = _c_limit(value)
        self._max_params_size = value

    @property
    def max_body(self):
        """Most stdin bytes of a request, None for no limit. See `fastfcgi_py.Parser`."""
        return self._max_body

    @max_body.setter
    def max_body(self, value):
        self._c_max_body = _c_limit(value)
        self._max_body = value

    # -- feeding ------------------------------------------------------------

    def feed(self, data):
        """Append bytes received from the web server; b"" marks EOF. See `fastfcgi_py.Parser.feed`."""
        cdef Py_buffer view
        if self._receiving:
            # Only the compiled core has this error: the pure one has no
            # buffer that another thread could pull from under recv().
            raise RuntimeError("Parser.feed() while a read is filling its buffer")
        if self._exports and data:
            # (EOF moves nothing, so a loop that still holds the lent buffer,
            # as uvloop does when it reports EOF, may say it.)
            raise BufferError("the receive buffer lent by get_buffer() is in use")
        self._lent = 0          # a buffer get_buffer lent is abandoned
        if self._eof:
            if data:
                raise RuntimeError("Parser.feed() after EOF")
            return
        if not data:
            self._eof = True
            return
        if not _try_buffer(data, &view):
            # What ``bytearray += data`` says.
            raise TypeError("can't concat %s to bytearray" % type(data).__name__)
        try:
            self._reserve(view.len)
            memcpy(self._buf + self._end, view.buf, view.len)
            self._end += view.len
        finally:
            PyBuffer_Release(&view)

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t used, cap
        cdef unsigned char* buf
        if self._cap - self._end >= n:
            return 0
        if self._exports:
            # get_buffer's buffer is acquired: it must not move under it.
            raise BufferError("the receive buffer lent by get_buffer() is in use")
        used = self._end - self._start
        if self._start:
            # Consumed bytes go only when their room is needed: the move
            # is at most one partial record.
            memmove(self._buf, self._buf + self._start, used)
            self._start = 0
            self._end = used
            if self._cap - used >= n:
                return 0
        cap = max(self._cap * 2, used + n)
        buf = <unsigned char*>realloc(self._buf, cap)
        if buf == NULL:
            raise MemoryError()
        self._buf = buf
        self._cap = cap
        return 0

    cdef void _compact(self) noexcept:
        cdef unsigned char* buf
        if self._start != self._end or self._lent or self._exports:
            return          # unparsed bytes, or a read is filling the free end
        self._start = self._end = 0
        if self._cap > BUF_SHRINK:
            # A huge feed was consumed: memory stays bounded per connection.
            buf = <unsigned char*>realloc(self._buf, BUF_INITIAL)
            if buf != NULL:
                self._buf = buf
                self._cap = BUF_INITIAL

    @property
    def error(self):
        """The sticky code, or 0. See `fastfcgi_py.Parser.error`."""
        return self._error

    @property
    def buffered(self):
        """How many received bytes are not consumed yet. See `fastfcgi_py.Parser.buffered`."""
        return self._end - self._start

    @property
    def keep_conn(self):
        """False once a request without FCGI_KEEP_CONN has begun. See `fastfcgi_py.Parser.keep_conn`."""
        return not self._closing

    @property
    def active(self):
        """How many requests are active. See `fastfcgi_py.Parser.active`."""
        return len(self._requests)

    @property
    def waiting(self):
        """Whether the next request waits, unread, for the active one to end. See `fastfcgi_py.Parser.waiting`."""
        return self._waiting()

    cdef bint _waiting(self) except -1:
        cdef const unsigned char* p = self._buf + self._start
        if (self._error or self._end - self._start < FCGI_HEADER_LEN
                or p[0] != FCGI_VERSION_1 or p[1] != FCGI_BEGIN_REQUEST
                or not (p[2] or p[3]) or not self._requests):
            return False
        return self._holds_next()

    def get_buffer(self, sizehint=-1):
        """asyncio.BufferedProtocol.get_buffer: the receive buffer itself. See `fastfcgi_py.Parser.get_buffer`."""
        cdef Py_ssize_t size = sizehint if sizehint > 0 else RECV_FIRST
        if self._eof:
            raise RuntimeError("Parser.get_buffer() after EOF")
        if self._receiving:
            raise RuntimeError("Parser.get_buffer() while a read is filling its buffer")
        self._lent = 0
        self._reserve(size)
        # _buf's free end is lent for one read, through an object whose
        # buffer (acquired by recv_into) points into it: while acquired,
        # the buffer cannot move (_reserve refuses), and each acquisition
        # points at where the bytes go now.  A read that gives nothing
        # (asyncio skips buffer_updated then) just abandons the loan.
        self._lent = size
        if self._lender is None:
            self._lender = _LentBuffer.__new__(_LentBuffer)
            (<_LentBuffer>self._lender).parser = self
        return self._lender

    def buffer_updated(self, nbytes):
        """nbytes were written into the buffer get_buffer gave. See `fastfcgi_py.Parser.buffer_updated`."""
        if not self._lent:
            raise RuntimeError("Parser.buffer_updated() without get_buffer()")
        if not 0 <= nbytes <= self._lent:
            raise ValueError("nbytes out of range: %r" % (nbytes,))
        self._lent = 0
        self._end += <Py_ssize_t>nbytes

    def data_to_send(self):
        """Return (and forget) the queued replies to management records. See `fastfcgi_py.Parser.data_to_send`."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    def end_request(self, request_id):
        """Mark request_id answered; the stdin bytes dropped past CONTENT_LENGTH. See `fastfcgi_py.Parser.end_request`."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return 0
        return (<_RequestState>state).excess

    def take_stdin_end(self, request_id):
        """Consume the empty STDIN that cleanly ends request_id's stdin, if it is next. See `fastfcgi_py.Parser.take_stdin_end`."""
        cdef const unsigned char* p = self._buf + self._start
        cdef _RequestState state
        if (self._error or self._end - self._start < FCGI_HEADER_LEN or p[0] != FCGI_VERSION_1
                or p[1] != FCGI_STDIN or ((p[2] << 8) | p[3]) != request_id
                or p[4] or p[5] or p[6]):
            return False
        found = self._requests.get(request_id)
        if found is None:
            return False
        state = <_RequestState>found
        if (state.params is None or state.stdin_done or state.aborted
                or state.stdin_seen < state.content_length):
            return False
        self._start += FCGI_HEADER_LEN
        state.stdin_done = True
        return True

    # -- the state machine -------------------------------------------------

    cdef int _fail(self, int code) noexcept:
        self._error = code
        return code

    def next_event(self):
        """Consume buffered records up to the next event. See `fastfcgi_py.Parser.next_event`."""
        return self._next_event()

    cdef object _next_event(self):
        cdef const unsigned char* p
        cdef Py_ssize_t avail, n, total
        cdef int rtype, request_id
        if self._error:
            return self._error
        while True:
            if self._closing and not self._requests:
                # We refused a request that did not ask to keep the
                # connection: nothing more is read from it.
                return self._fail(NOREQ)
            avail = self._end - self._start
            if avail < FCGI_HEADER_LEN:
                if self._eof:
                    if avail or self._requests:
                        return self._fail(EOF)
                    return self._fail(NOREQ)
                self._compact()
                return None
            p = self._buf + self._start
            # The version is checked as soon as the header is in, before
            # waiting for the content: garbage fails fast.
            if p[0] != FCGI_VERSION_1:
                return self._fail(PROTO)
            rtype = p[1]
            request_id = (p[2] << 8) | p[3]
            if (rtype == FCGI_BEGIN_REQUEST and self._requests and request_id
                    and self._holds_next()):
                # The next request: read once this one ends.  If the peer
                # closed meanwhile, the active request is left at EOF.
                return self._fail(EOF) if self._eof else None
            n = (p[4] << 8) | p[5]
            total = FCGI_HEADER_LEN + n + p[6]
            if avail < total:
                if self._eof:
                    return self._fail(EOF)
                return None
            # The record is consumed before its handler runs.  Its content
            # stays valid meanwhile: handlers run none of the caller's code
            # while they read it, so nothing feeds (moves) the buffer.
            self._start += total
            event = self._dispatch(rtype, request_id, p + FCGI_HEADER_LEN, n)
            if event is not None:
                return event

    cdef bint _holds_next(self) except -1:
        # A connection that does not multiplex, and its active request's
        # input is complete: a BEGIN_REQUEST now is the next request.
        if self.mpxs_conns:
            return False
        for state in (<dict>self._requests).values():
            return _input_complete(<_RequestState>state)
        return False

    cdef object _dispatch(self, int rtype, int request_id,
                          const unsigned char* content, Py_ssize_t n):
        cdef PyObject* found
        cdef _RequestState state
        if request_id == 0:
            # Management records (spec 4) carry id 0.
            if rtype == FCGI_GET_VALUES:
                return self._on_get_values(content, n)
            if FCGI_BEGIN_REQUEST <= rtype <= FCGI_DATA:
                return self._fail(PROTO)      # a request record with id 0
            self._out.append(_unknown_type_record(rtype))
            return None
        if rtype == FCGI_BEGIN_REQUEST:
            return self._on_begin_request(request_id, content, n)
        found = PyDict_GetItem(self._requests, request_id)
        if found == NULL:
            return None         # spec 3.3: an inactive id's record is ignored
        state = <_RequestState>found
        if (rtype == FCGI_ABORT_REQUEST or rtype == FCGI_PARAMS
                or rtype == FCGI_STDIN or rtype == FCGI_DATA):
            if state.aborted:
                return None     # its input is over: the rest is skipped
            if rtype == FCGI_ABORT_REQUEST:
                return _abort(state, ABORT)
            if rtype == FCGI_PARAMS:
                return self._on_params(state, content, n)
            if rtype == FCGI_STDIN:
                return self._on_stdin(state, content, n)
            return self._on_data(state, content, n)
        elif (rtype == FCGI_END_REQUEST or rtype == FCGI_STDOUT
              or rtype == FCGI_STDERR or rtype == FCGI_GET_VALUES
              or rtype == FCGI_GET_VALUES_RESULT or rtype == FCGI_UNKNOWN_TYPE):
            # A record only applications send, or a management record with
            # a request id.
            return self._fail(PROTO)
        self._out.append(_unknown_type_record(rtype))
        return None

    cdef object _on_begin_request(self, int request_id,
                                  const unsigned char* content, Py_ssize_t n):
        cdef int role, flags, reply
        cdef _RequestState state
        if n != 8 or request_id in self._requests:
            return self._fail(PROTO)
        role = (content[0] << 8) | content[1]
        flags = content[2]
        if not flags & FCGI_KEEP_CONN:
            self._closing = True
        if role != FCGI_RESPONDER and role != FCGI_AUTHORIZER and role != FCGI_FILTER:
            reply = FCGI_UNKNOWN_ROLE
        elif self._requests and not self.mpxs_conns:
            reply = FCGI_CANT_MPX_CONN
        elif len(self._requests) >= self.max_reqs:
            # Spec 5.5: a multiplexing application out of a resource (here
            # the requests one connection may run at once) says OVERLOADED.
            reply = FCGI_OVERLOADED
        else:
            state = _RequestState.__new__(_RequestState)
            state.request_id = request_id
            state.role = role
            state.flags = flags
            state.content_length = -1
            self._requests[request_id] = state
            return None
        # Refused: answered now, and the id stays inactive (its records are
        # ignored).
        self._out.append(_end_request_record(request_id, 0, reply))
        return None

    cdef object _on_params(self, _RequestState state,
                           const unsigned char* content, Py_ssize_t n):
        cdef long long length
        cdef dict params
        if state.params is not None:
            return self._fail(PROTO)
        if n:
            if state.params_len + n > self._c_max_params_size:
                return _abort(state, PLEN)
            state.add_params(content, n)
            return None
        # The empty record ends the stream (spec 3.3).
        decoded = _decode_request_params(state.params_buf, state.params_len,
                                         self._c_max_param_size)
        free(state.params_buf)
        state.params_buf = NULL
        state.params_len = state.params_cap = 0
        if type(decoded) is int:
            if decoded == PROTO:
                return self._fail(PROTO)
            return _abort(state, decoded)
        params = <dict>decoded
        cl = params.get("CONTENT_LENGTH")
        if cl and cl != "-1":   # Caddy 2.6 sends -1 for a body of unknown length
            length = _content_length(cl)
            if length < 0 or length > self._c_max_body:
                return _abort(state, CLEN)
            state.content_length = length
        state.params = params
        return (FCGI_PARAMS, state.request_id, state.role, state.flags, params)

    cdef object _on_stdin(self, _RequestState state,
                          const unsigned char* content, Py_ssize_t n):
        if state.params is None or state.stdin_done:
            return self._fail(PROTO)
        cdef long long keep
        if not n:
            state.stdin_done = True
            if 0 <= state.content_length and state.stdin_seen < state.content_length:
                return _abort(state, ABORT)
            return (FCGI_STDIN, state.request_id, b"")
        if 0 <= state.content_length < state.stdin_seen + n:
            # More than CONTENT_LENGTH: cut there (PEP 3333; see the pure
            # core), and count the rest.
            keep = state.content_length - state.stdin_seen
            state.excess += state.stdin_seen + n - state.content_length
            state.stdin_seen = state.content_length
            if not keep:
                return None
            return (FCGI_STDIN, state.request_id,
                    PyBytes_FromStringAndSize(<char*>content, <Py_ssize_t>keep))
        state.stdin_seen += n
        if state.stdin_seen > self._c_max_body:
            return _abort(state, CLEN)
        return (FCGI_STDIN, state.request_id,
                PyBytes_FromStringAndSize(<char*>content, n))

    cdef object _on_data(self, _RequestState state,
                         const unsigned char* content, Py_ssize_t n):
        # Spec 6.4: only a FILTER has a data stream; it follows the params.
        if state.params is None or state.data_done or state.role != FCGI_FILTER:
            return self._fail(PROTO)
        if not n:
            state.data_done = True
            return (FCGI_DATA, state.request_id, b"")
        state.data_seen += n
        if state.data_seen > self._c_max_body:
            return _abort(state, CLEN)
        return (FCGI_DATA, state.request_id,
                PyBytes_FromStringAndSize(<char*>content, n))

    cdef object _on_get_values(self, const unsigned char* content, Py_ssize_t n):
        # Rare, so the answer is built with Python objects, as in the pure
        # core (spec 4.1).  The names are limited to one record's worth.
        asked = _decode_params(content, n, FCGI_MAX_CONTENT)
        if type(asked) is int:
            return self._fail(PROTO)
        known = {"FCGI_MAX_CONNS": str(self.max_conns),
                 "FCGI_MAX_REQS": str(self.max_reqs),
                 "FCGI_MPXS_CONNS": "1" if self.mpxs_conns else "0"}
        answer = [(name, known[name]) for name in asked if name in known]
        self._out.append(_record(FCGI_GET_VALUES_RESULT, 0, encode_params(answer)))
        return None


_os_strerror = _os.strerror
_os_fsdecode = _os.fsdecode
_SOCKET_RECV = _socket.socket.recv
_SOCKET_SENDALL = _socket.socket.sendall


cdef int _plain_fd(object sock) except -2:
    """The fd of a plain socket.socket, else -1 (see the fast path above)."""
    cls = type(sock)
    if (getattr(cls, "recv", None) is _SOCKET_RECV
            and getattr(cls, "sendall", None) is _SOCKET_SENDALL):
        return sock.fileno()
    return -1


##############################################################################
# Writer  #####################################################################
##############################################################################
#
# fastfcgi_py.Writer's records, each method building its whole output in
# one bytes object.  Checks run in the pure core's order, so the first
# error is the same one.

cdef unsigned char _TCHAR[128]      # RFC 9110 5.6.2 token characters


cdef void _init_tchar() noexcept:
    cdef const char* c = (b"!#$%&'*+-.^_`|~0123456789"
                          b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    while c[0]:
        _TCHAR[<unsigned char>c[0]] = 1
        c += 1


_init_tchar()


cdef int _check_value(object text, str what) except -1:
    # RFC 9110 5.5: visible characters, SP, HTAB and obs-text (latin-1);
    # CR and LF above all would let an application split the response.
    cdef Py_UCS4 c
    if type(text) is not str:
        raise TypeError("%s must be str, not %s" % (what, type(text).__name__))
    for c in <str>text:
        if (c < 32 and c != 9) or c == 127 or c > 255:
            raise ValueError("invalid character %r in %s %r"
                             % (PyUnicode_FromOrdinal(c), what, text))
    return 0


cdef bint _is_token(str name) noexcept:
    cdef Py_UCS4 c
    if not name:
        return False
    for c in name:
        if c >= 128 or not _TCHAR[c]:
            return False
    return True


cdef list _head_items(object status, object headers, Py_ssize_t* size):
    # Check a head as fastfcgi_py.Writer.head does; return its str in
    # writing order (status, name, value, name, value, ...) and set *size to
    # the length of the head in bytes.
    cdef Py_ssize_t n
    cdef str text
    if type(status) is not str:
        raise TypeError("status must be str, not %s" % type(status).__name__)
    text = status
    n = len(text)
    if not (n >= 3 and u'0' <= text[0] <= u'9' and u'0' <= text[1] <= u'9'
            and u'0' <= text[2] <= u'9' and (n == 3 or text[3] == u' ')):
        raise ValueError("invalid status %r" % (status,))
    _check_value(status, "status")
    items = [status]
    n += 12                     # "Status: ", CRLF, and the blank line's CRLF
    for name, value in headers:
        if type(name) is not str:
            raise TypeError("header name must be str, not %s" % type(name).__name__)
        if not _is_token(name):
            raise ValueError("invalid header name %r" % (name,))
        _check_value(value, "header value")
        items.append(name)
        items.append(value)
        n += len(<str>name) + len(<str>value) + 4
    size[0] = n
    return items


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _framer_put_head(Framer* f, list items) noexcept:
    # The CGI response head: "Status: ...", "Name: value" lines, a blank
    # line; each line ends in CRLF.
    cdef Py_ssize_t i
    _framer_put(f, b"Status: ", 8)
    _framer_put_str(f, <str>items[0])
    _framer_put(f, b"\r\n", 2)
    for i in range(1, len(items), 2):
        _framer_put_str(f, <str>items[i])
        _framer_put(f, b": ", 2)
        _framer_put_str(f, <str>items[i + 1])
        _framer_put(f, b"\r\n", 2)
    _framer_put(f, b"\r\n", 2)


cdef bytes _stream(int rtype, object request_id, object data):
    # Writer.stdout and Writer.stderr.
    cdef Py_buffer view
    cdef long rid = _check_range(request_id, 0xFFFF, "request id")
    cdef Framer f
    _get_data(data, &view)
    try:
        if not view.len:
            return b""
        rid = _packed(request_id, rid, _H)
        out = PyBytes_FromStringAndSize(NULL, _framed_size(view.len))
        _framer_init(&f, <unsigned char*>PyBytes_AS_STRING(out), rtype,
                     <unsigned int>rid, view.len)
        _framer_put(&f, <const char*>view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


cdef bytes _stream_end(int rtype, object request_id):
    cdef long rid = _check_range(request_id, 0xFFFF, "request id")
    rid = _packed(request_id, rid, _H)
    out = PyBytes_FromStringAndSize(NULL, FCGI_HEADER_LEN)
    _put_header(<unsigned char*>PyBytes_AS_STRING(out), rtype,
                <unsigned int>rid, 0, 0)
    return out


cdef bytes _finish(unsigned int request_id, list head, Py_ssize_t head_len,
                   const char* body, Py_ssize_t body_len, object app_status):
    # STDOUT records of head and body, the STDOUT terminator and
    # END_REQUEST(app_status, REQUEST_COMPLETE), in one allocation.
    cdef unsigned long long status = _app_status32(app_status)
    cdef Py_ssize_t n = head_len + body_len
    cdef Framer f
    out = PyBytes_FromStringAndSize(NULL, _framed_size(n) + 3 * FCGI_HEADER_LEN)
    _framer_init(&f, <unsigned char*>PyBytes_AS_STRING(out), FCGI_STDOUT,
                 request_id, n)
    if head is not None:
        _framer_put_head(&f, head)
    _framer_put(&f, body, body_len)
    _put_end_body(
        _put_header(_put_header(f.p, FCGI_STDOUT, request_id, 0, 0),
                    FCGI_END_REQUEST, request_id, 8, 0),
        status, FCGI_REQUEST_COMPLETE)
    return out


cdef bytes _head_bytes(list items, Py_ssize_t size):
    # The head _head_items checked, as bytes.
    cdef Framer f
    out = PyBytes_FromStringAndSize(NULL, size)
    _framer_init_raw(&f, <unsigned char*>PyBytes_AS_STRING(out))
    _framer_put_head(&f, items)
    return out


cdef class Writer:
    """Builds the records an application sends. See `fastfcgi_py.Writer`."""

    def stdout(self, request_id, data):
        """STDOUT records carrying data. See `fastfcgi_py.Writer.stdout`."""
        return _stream(FCGI_STDOUT, request_id, data)

    def stderr(self, request_id, data):
        """STDERR records carrying data. See `fastfcgi_py.Writer.stderr`."""
        return _stream(FCGI_STDERR, request_id, data)

    def end_stdout(self, request_id):
        """The empty STDOUT record. See `fastfcgi_py.Writer.end_stdout`."""
        return _stream_end(FCGI_STDOUT, request_id)

    def end_stderr(self, request_id):
        """The empty STDERR record. See `fastfcgi_py.Writer.end_stderr`."""
        return _stream_end(FCGI_STDERR, request_id)

    def end_request(self, request_id, app_status=0,
                    protocol_status=FCGI_REQUEST_COMPLETE):
        """END_REQUEST. See `fastfcgi_py.Writer.end_request`."""
        cdef long rid = _check_range(request_id, 0xFFFF, "request id")
        cdef long ps = _check_range(protocol_status, 255, "protocol status")
        rid = _packed(request_id, rid, _H)
        cdef unsigned long long status = _app_status32(app_status)
        ps = _packed(protocol_status, ps, _B)
        return _end_request_record(<unsigned int>rid, status, <int>ps)

    def finish(self, request_id, data=b"", *, app_status=0):
        """STDOUT records of data, the terminator and END_REQUEST. See `fastfcgi_py.Writer.finish`."""
        cdef Py_buffer view
        cdef long rid = _check_range(request_id, 0xFFFF, "request id")
        _get_data(data, &view)
        try:
            rid = _packed(request_id, rid, _H)
            return _finish(<unsigned int>rid, None, 0, <const char*>view.buf,
                           view.len, app_status)
        finally:
            PyBuffer_Release(&view)

    def head(self, status, headers):
        """The CGI response head as latin-1 bytes. See `fastfcgi_py.Writer.head`."""
        cdef Py_ssize_t size
        items = _head_items(status, headers, &size)
        return _head_bytes(items, size)

    def response(self, request_id, status, headers, body=b"", *, app_status=0):
        """A whole response in one buffer. See `fastfcgi_py.Writer.response`."""
        cdef Py_buffer view
        cdef Py_ssize_t head_len
        cdef long rid
        if type(self) is not Writer:
            # A subclass may override head or finish: use them, as the
            # pure core does.
            return self.finish(request_id, self.head(status, headers) + _as_bytes(body),
                               app_status=app_status)
        items = _head_items(status, headers, &head_len)
        _get_data(body, &view)
        try:
            rid = _check_range(request_id, 0xFFFF, "request id")
            rid = _packed(request_id, rid, _H)
            return _finish(<unsigned int>rid, items, head_len,
                           <const char*>view.buf, view.len, app_status)
        finally:
            PyBuffer_Release(&view)

    def get_values_result(self, pairs):
        """GET_VALUES_RESULT carrying pairs. See `fastfcgi_py.Writer.get_values_result`."""
        content = encode_params(pairs)
        if len(content) > FCGI_MAX_CONTENT:
            raise ValueError("GET_VALUES_RESULT content over 65535 bytes")
        return _record(FCGI_GET_VALUES_RESULT, 0, content)

    def unknown_type(self, record_type):
        """UNKNOWN_TYPE naming record_type. See `fastfcgi_py.Writer.unknown_type`."""
        cdef long rtype = _check_range(record_type, 255, "record type")
        if rtype < 0:
            rtype = bytes((record_type,))[0]    # the pure core's conversion
        return _unknown_type_record(<int>rtype)


##############################################################################
# Connections  ################################################################
##############################################################################
#
# A Connection accepted here is a file descriptor: read_event and sendall
# call recv(2) and send(2) on it, and close() closes it.  The socket object
# (and the getsockname(2) that making one costs) comes only when something
# asks for ``sock``: a kept connection, a streamed response, a drain.  Most
# connections carry one request and never need it.  The blocking read loop
# is here, in C, receiving straight into the Parser's buffer; everything
# else a Connection does (the demultiplexer, FU's read_request, poll) is
# fastfcgi_py's code.
#
# A plain socket.socket (recv and sendall not overridden, unlike an
# SSLSocket's) is read with recv(2) on its fd as well.  Any other object, a
# closed socket (fd -1), or a socket with a timeout (its fd is non-blocking:
# EAGAIN) goes through sock.recv and sock.sendall, exactly as the pure core
# does, so timeouts behave the same.


@cython.auto_pickle(False)
cdef class Connection:
    """Connection(sock, parser, writer, peer="", send_file=None)

    A web server's connection: the socket and the core objects that read and write it. See `fastfcgi_py.Connection`."""

    def __cinit__(self):
        # What __init__ sets too, for the connections accept() makes
        # without it.
        self._fd = -1
        self.requests = {}
        self.request_class = Request
        self.request_id = self.role = self.flags = 0
        self._recv_size = RECV_FIRST

    def __dealloc__(self):
        if self._sock is None and self._fd >= 0:
            close(self._fd)

    @cython.embedsignature(False)
    def __init__(self, sock, parser, writer, peer="", send_file=None, request_class=None):
        self._sock = sock
        self.parser = parser
        self.writer = writer
        self.peer = peer
        self.send_file = send_file
        self.drain = False
        self.registered = False
        self.retiring = False
        if request_class is not None:
            self.request_class = request_class

    @staticmethod
    def accept(listener, nodelay=True):
        """Accept a connection from ``listener``. See `fastfcgi_py.Connection.accept`."""
        cdef sockaddr_storage addr
        cdef socklen_t addr_len = sizeof(addr)
        cdef int lfd, fd, err = 0, one = 1
        cdef Connection conn
        if listener.gettimeout():
            # Python's accept() waits out the timeout: let it.
            conn = _py.Connection.accept.__func__(Connection, listener, nodelay)
            return conn
        lfd = listener.fileno()
        memset(&addr, 0, sizeof(addr))
        while True:
            with nogil:
                fd = fastfcgi_accept(lfd, &addr, &addr_len)
                if fd < 0:
                    err = errno
            if fd >= 0:
                break
            if err != EINTR:
                raise OSError(err, _os_strerror(err))
            PyErr_CheckSignals()
        conn = Connection.__new__(Connection)
        conn._fd = fd
        conn._family = addr.ss_family
        conn.peer = _peer_address(&addr, addr_len)
        conn.send_file = None
        if nodelay and addr.ss_family != AF_UNIX:
            if setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0:
                err = errno
                raise OSError(err, _os_strerror(err))   # conn's dealloc closes fd
        return conn

    @property
    def sock(self):
        """The socket (made from the fd when first asked for)."""
        if self._sock is None:
            if self._fd < 0:
                raise OSError(EBADF, "the connection is closed")
            self._sock = _socket.socket(self._family, SOCK_STREAM, 0, self._fd)
            self._fd = -1           # the socket owns it now
        return self._sock

    @sock.setter
    def sock(self, value):
        # As the pure core's attribute: the new socket replaces the old,
        # and an fd no socket owns yet is closed, as its socket would be.
        if self._sock is None and self._fd >= 0:
            close(self._fd)
        self._fd = -1
        self._sock = value

    def fileno(self):
        return self._fd if self._sock is None else self._sock.fileno()

    # The demultiplexer, FU's reader and poll: the pure core's code, but
    # for the per-request steps below.
    route = _py._Demultiplexer.route
    _keep_pending = _py._Demultiplexer._keep_pending
    read_request = _py.Connection.read_request
    poll = _py.Connection.poll
    keep_conn = _py.Connection.keep_conn

    def next_request(self, wait=True):
        """The next request. See `fastfcgi_py.Connection.next_request`."""
        # The common event, a request's params, routed here; any other by
        # the pure core's route.
        if self.pending:
            return self.pending.pop(0)
        while True:
            event = self._read(wait)
            if event is None:
                return None
            if type(event) is tuple and (<tuple>event)[0] == FCGI_PARAMS:
                return self.request_class(self, (<tuple>event)[1], (<tuple>event)[2],
                                          (<tuple>event)[3], (<tuple>event)[4])
            found = self.route(event)
            if found is not None:
                return found

    def end_request(self, request_id):
        """The request's END_REQUEST is sent: forget it. See `fastfcgi_py._Demultiplexer.end_request`."""
        if type(self.requests) is dict:
            (<dict>self.requests).pop(request_id, None)
        else:
            self.requests.pop(request_id, None)
        if type(self.parser) is Parser:
            return (<Parser>self.parser).end_request(request_id)
        return self.parser.end_request(request_id)

    def read_event(self):
        """Block until the parser's next event. See `fastfcgi_py.Connection.read_event`."""
        return self._read(True)

    def _read(self, bint wait):
        if self.error:
            return self.error
        if type(self.parser) is not Parser:
            return _py.Connection._read(self, wait)
        if self._sock is None:
            return self._read_event(<Parser>self.parser, None, self._fd, wait)
        return self._read_event(<Parser>self.parser, self._sock, _plain_fd(self._sock), wait)

    def _fail(self, code):
        self.error = code
        return code

    cdef object _read_event(self, Parser p, object sock, int fd, bint wait):
        cdef int got
        while True:
            event = p._next_event()
            if p._out and self._send_out(p, sock, fd) != OK:
                self.error = SEND
                return SEND
            if event is not None:
                return event
            if p._waiting():
                raise RuntimeError("read_event(): the next request waits for the active "
                                   "one to be answered")
            got = self._recv(p, sock, fd, wait or len(p._requests) > 0)
            if got == NOT_YET:
                return None
            if got != OK:
                self.error = IO
                return IO

    cdef int _send_out(self, Parser p, object sock, int fd) except -128:
        # Send the parser's queued replies; OK or SEND.
        cdef bytes data = b"".join(p._out)
        cdef const char* buf = PyBytes_AS_STRING(data)
        cdef Py_ssize_t sent = 0, size = len(data)
        cdef ssize_t r
        cdef int err = 0
        p._out = []
        while fd >= 0 and sent < size:
            with nogil:
                r = send(fd, buf + sent, <size_t>(size - sent), MSG_NOSIGNAL)
                if r < 0:
                    err = errno
            if r >= 0:
                sent += r
                if sent < size:
                    # A signal cuts a blocking send short rather than fail
                    # it with EINTR: its handler runs now, as in sendall.
                    PyErr_CheckSignals()
            elif err == EINTR:
                PyErr_CheckSignals()    # a handler's exception propagates
            elif err == EAGAIN or err == EWOULDBLOCK:
                break                   # timeout socket: sendall waits
            else:
                return SEND
        if sent == size:
            return OK
        if sock is None:
            return SEND         # a bare fd is never non-blocking
        try:
            sock.sendall(data[sent:] if sent else data)
        except OSError:
            return SEND
        return OK

    cdef int _recv(self, Parser p, object sock, int fd, bint wait) except -128:
        # Receive once into the parser's buffer (or feed what sock.recv
        # gave); OK or IO, or without ``wait`` NOT_YET when nothing came.
        cdef ssize_t r
        cdef int err = 0
        cdef int flags = 0 if wait else MSG_DONTWAIT
        cdef unsigned char* where
        cdef Py_ssize_t size = self._recv_size
        if fd >= 0:
            p._reserve(size)
            where = p._buf + p._end
            # recv() fills the buffer without the GIL: until it returns,
            # another thread's feed() must not move or grow it.
            p._receiving = True
            try:
                while True:
                    with nogil:
                        r = recv(fd, where, <size_t>size, flags)
                        if r < 0:
                            err = errno
                    if r > 0:
                        p._end += r
                        if r == size and size < RECV_SIZE:
                            self._recv_size = size * 2  # a stream: read more at once
                        return OK
                    if r == 0:
                        p._eof = True
                        return OK
                    if err == EINTR:
                        PyErr_CheckSignals()    # a handler's exception propagates
                    elif err == EAGAIN or err == EWOULDBLOCK:
                        if not wait:
                            return NOT_YET
                        break                   # timeout socket: sock.recv waits
                    else:
                        return IO
            finally:
                p._receiving = False
            if sock is None:
                return IO       # a bare fd is never non-blocking
        try:
            data = sock.recv(size) if wait else sock.recv(size, MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return NOT_YET
        except OSError:
            return IO
        if len(data) == size and size < RECV_SIZE:
            self._recv_size = size * 2
        p.feed(data)
        return OK

    def sendall(self, data):
        """Send all of ``data``; raises OSError as socket.sendall."""
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            self._send_fd(data, MSG_NOSIGNAL)

    def send_last(self, data):
        """Send ``data``, the connection's last output, and half-close it. See `fastfcgi_py.Connection.send_last`."""
        cdef int family = self._family if self._sock is None else self._sock.family
        if self.retiring:
            self.retiring = False
            data = data + _py.RETIRE_RECORD
        if MSG_MORE == 0 or family == AF_UNIX:
            self.sendall(data)
        elif self._sock is not None:
            self._sock.sendall(data, MSG_MORE)
            self._sock.shutdown(SHUT_WR)
        else:
            self._send_fd(data, MSG_NOSIGNAL | MSG_MORE)
            if shutdown(self._fd, SHUT_WR) < 0:
                raise OSError(errno, _os_strerror(errno))

    cdef _send_fd(self, data, int flags):
        cdef Py_buffer view
        cdef Py_ssize_t sent = 0
        cdef ssize_t r
        cdef int err = 0
        if self._fd < 0:
            raise OSError(EBADF, "the connection is closed")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            while sent < view.len:
                with nogil:
                    r = send(self._fd, <const char*>view.buf + sent,
                             <size_t>(view.len - sent), flags)
                    if r < 0:
                        err = errno
                if r >= 0:
                    sent += r
                    if sent < view.len:
                        PyErr_CheckSignals()    # cut short by a signal: see _send_out
                elif err == EINTR:
                    PyErr_CheckSignals()    # a handler's exception propagates
                else:
                    raise OSError(err, _os_strerror(err))
        finally:
            PyBuffer_Release(&view)

    def close(self):
        if self._sock is not None:
            self._sock.close()
        elif self._fd >= 0:
            close(self._fd)
            self._fd = -1

    @property
    def peer_text(self):
        peer = self.peer
        return "%s:%s" % peer[:2] if isinstance(peer, tuple) else (peer or "unix")


cdef object _peer_address(sockaddr_storage* addr, socklen_t addr_len):
    """What Python's accept() gives as the peer address (its makesockaddr)."""
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    cdef sockaddr_un* un
    cdef Py_ssize_t path_len
    if addr.ss_family == AF_INET:
        v4 = <sockaddr_in*>addr
        inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(v4.sin_port))
    if addr.ss_family == AF_INET6:
        v6 = <sockaddr_in6*>addr
        inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo),
                v6.sin6_scope_id)
    un = <sockaddr_un*>addr
    path_len = <Py_ssize_t>addr_len - <Py_ssize_t>(<char*>un.sun_path - <char*>un)
    if path_len <= 0:
        return ""                           # unnamed, as the web server's are
    if un.sun_path[0] == 0:
        return un.sun_path[:path_len]       # Linux's abstract namespace: bytes
    return _os_fsdecode(<bytes>un.sun_path)


##############################################################################
# Requests and the WSGI gateway  ##############################################
##############################################################################
#
# Typed twins of the per-request steps the profile shows hot: the Request's
# state, making it and finishing it; and the three hot steps of
# fastfcgi_py.WSGIGateway, which takes them from its core: the environ
# (_wsgi_environ), start_response's checks (_Response), and the common answer,
# a list body framed with its head and END_REQUEST into one buffer and sent
# at once (_send_list).  Everything else is the pure core's own code: the
# Request's other methods come from fastfcgi_py._RequestMethods, the
# gateway, its policy and the servers are fastfcgi_py's classes.  Each twin
# falls back to that code whenever the writer or the request is not this
# core's.

_RequestError = _py.RequestError
_ROLE_NAMES = _py.ROLE_NAMES
_log_excess = _py._log_excess


cdef class _RequestCore:
    """The state of a `Request`, and its per-request methods, in C."""

    @cython.embedsignature(False)
    def __init__(self, connection, request_id, role, flags, params):
        cdef Parser fast
        if type(connection) is Connection:      # its events come here
            (<Connection>connection).requests[request_id] = self
        else:
            connection.requests[request_id] = self
        self.connection = connection
        self.request_id = request_id
        self.role = role
        self.keep_conn = bool(flags & FCGI_KEEP_CONN)
        self.params = params
        self.encoding = "utf-8"
        self._buffer = b""
        self._stdin_done = role == FCGI_AUTHORIZER
        self.stdout_bytes = 0
        self._data_buffer = b""
        self._data_done = role != FCGI_FILTER
        if self._stdin_done:
            return
        parser = connection.parser
        if type(parser) is Parser:
            fast = <Parser>parser
            if fast._end - fast._start < FCGI_HEADER_LEN:
                return
        elif parser.buffered < 8:
            return
        if parser.take_stdin_end(request_id):
            self._stdin_done = True     # a GET's empty STDIN, the common case
        else:
            self._take_buffered_stdin()

    cdef bint _send(self, object data, bint last) except -1:
        if self._gone:
            return False
        try:
            if last:
                self.connection.send_last(data)
            else:
                self.connection.sendall(data)
            return True
        except OSError:
            self._aborted = self._gone = True
            return False

    def send(self, data, _last=False):
        """Send already framed bytes. See `fastfcgi_py.Request.send`."""
        return self._send(data, _last)

    # fastfcgi_py.Request's read-only state, read for every request.

    @property
    def finished(self):
        """True once finish() ran. See `fastfcgi_py.Request.finished`."""
        return self._finished

    @property
    def connection_lost(self):
        """True once the connection can carry nothing more for the request. See `fastfcgi_py.Request.connection_lost`."""
        return self._gone

    @property
    def stdin_done(self):
        """True once all of stdin (and the FILTER data) has arrived. See `fastfcgi_py.Request.stdin_done`."""
        return self._stdin_done and self._data_done

    @property
    def unread_error(self):
        """The code that ended the input, if no read raised it yet. See `fastfcgi_py.Request.unread_error`."""
        return self._input_error

    def finish(self, exit_code=0, _tail=b""):
        """End the request with exit_code as the application status. See `fastfcgi_py.Request.finish`."""
        if self._finished:
            return
        self._finished = True
        if self._aborted:
            # Spec 5.4: END_REQUEST alone for an aborted request.
            out = self.connection.writer.end_request(self.request_id, exit_code)
            self._finish_with(out, 0)
            return
        out = self.connection.writer.finish(self.request_id, _tail, app_status=exit_code)
        if self._stderr_used:
            out = self.connection.writer.end_stderr(self.request_id) + out
        self._finish_with(out, len(_tail))

    cdef int _finish_with(self, object out, Py_ssize_t tail_len) except -1:
        # The rest of finish, once _finished is set and ``out`` framed.
        conn = self.connection
        self.stdout_bytes += tail_len
        self._send(out, not self.keep_conn and self._stdin_done and self._data_done)
        excess = conn.end_request(self.request_id)     # spec 3.3: inactive from now
        if excess:
            _log_excess(self, excess)
        return 0


class Request(_RequestCore, _py._RequestMethods):
    """One FastCGI request, its state and hot paths in C. See `fastfcgi_py.Request`."""

    __slots__ = ()


cdef class _AsyncRequestCore(_RequestCore):
    """The state an `AsyncRequest` adds, in C (None and False to start)."""


class AsyncRequest(_py._AsyncRequestMethods, _AsyncRequestCore, Request):
    """One request on the asyncio server, its state and finish in C. See `fastfcgi_py.AsyncRequest`."""

    __slots__ = ()


cdef class _Response:
    """What start_response and write() share for one request. See `fastfcgi_py._Response`."""

    def __init__(self, request, head_only):
        self.request = request
        self.head_only = head_only

    def start_response(self, status, headers, exc_info=None):
        """PEP 3333's start_response. See `fastfcgi_py._Response`."""
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None     # no reference cycle through the frame
        elif self.status is not None:
            raise RuntimeError("start_response() called again without exc_info")
        # Checked now, so a bad head fails inside the application's call.
        writer = self.request.connection.writer
        if type(writer) is Writer:
            self._head_items = _head_items(status, headers, &self._head_len)
            self._head_bytes = None
        else:
            self._head_bytes = writer.head(status, headers)
            self._head_items = None
        self.status = status
        self.headers = headers
        return self.write

    def head(self):
        """The head's bytes, now sent. See `fastfcgi_py._Response`."""
        if self.status is None:
            raise RuntimeError("the application sent a body before start_response()")
        self.head_sent = True
        if self._head_bytes is None:
            self._head_bytes = _head_bytes(self._head_items, self._head_len)
        return self._head_bytes

    def write(self, data):
        """PEP 3333's write() callable: sends at once."""
        if type(data) is not bytes:
            raise TypeError("write() takes bytes, not %s" % type(data).__name__)
        request = self.request
        if not self.head_sent:
            request.print_stdout(self.head())
        if data and not self.head_only:
            request.print_stdout(data)


@cython.final
cdef class InputStream:
    """wsgi.input: the request's stdin, streamed (bytes). See `fastfcgi_py.InputStream`."""

    cdef object _request

    def __init__(self, request):
        self._request = request

    def read(self, size=-1):
        return self._request.read_stdin_bytes(None if size is None or size < 0 else size)

    def readline(self, size=-1):
        return self._request.read_stdin_line_bytes(None if size is None or size < 0 else size)

    readlines = _py._LineReader.readlines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


@cython.final
cdef class ErrorStream:
    """wsgi.errors: text written here goes out as FCGI_STDERR. See `fastfcgi_py.ErrorStream`."""

    cdef object _request

    def __init__(self, request):
        self._request = request

    def write(self, text):
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        if not self._request.finished:
            self._request.print_stderr(data)
        return len(text)

    writelines = _py._LineWriter.writelines
    flush = _py._LineWriter.flush


def _wsgi_environ(dict constant_keys, object request):
    """The PEP 3333 environ. See `fastfcgi_py._wsgi_environ`."""
    params = (<_RequestCore>request).params if isinstance(request, _RequestCore) else request.params
    cdef dict env = (<dict>params).copy() if type(params) is dict else params.copy()
    if "HTTP_CONTENT_TYPE" in env:
        value = env.pop("HTTP_CONTENT_TYPE")
        env.setdefault("CONTENT_TYPE", value)
    if "HTTP_CONTENT_LENGTH" in env:
        value = env.pop("HTTP_CONTENT_LENGTH")
        if request.role != FCGI_AUTHORIZER:     # an authorizer gets no body
            env.setdefault("CONTENT_LENGTH", value)
    if env.get("CONTENT_LENGTH") == "-1":
        env["CONTENT_LENGTH"] = ""      # Caddy's "unknown": the stream has the end
    https = env.get("HTTPS")
    secure = (https is not None and https.lower() in ("on", "1")) or \
        env.get("REQUEST_SCHEME") == "https"
    env.update(constant_keys)
    env["wsgi.url_scheme"] = "https" if secure else "http"
    env["wsgi.input"] = InputStream(request)
    env["wsgi.errors"] = ErrorStream(request)
    env["fastcgi.request"] = request
    role = request.role
    if role == FCGI_RESPONDER:
        env["fastcgi.role"] = "RESPONDER"
    else:
        env["fastcgi.role"] = _ROLE_NAMES.get(role, str(role))
        if role == FCGI_FILTER:
            env["fastcgi.data"] = request.data
    for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING"):
        if key not in env:
            env[key] = ""       # PEP 3333 wants them, maybe empty
    return env


def _send_list(object request, object response, object result):
    """A list body, its head, the stream's end and END_REQUEST in one send. See `fastfcgi_py._send_list`."""
    # False, having done nothing, when this is not that case or not this
    # core's request and writer: fastfcgi_py's _send_list then answers.
    cdef _Response r
    cdef _RequestCore req
    cdef long rid
    if (type(result) is not list or type(response) is not _Response
            or not isinstance(request, _RequestCore)):
        return False
    r = <_Response>response
    if r.head_sent or r._head_items is None:
        return False
    body = (<list>result)[0] if len(<list>result) == 1 else b"".join(result)
    if type(body) is not bytes:
        return False            # the pure code says what is wrong
    req = <_RequestCore>request
    if req._aborted or req._stderr_used:
        return False            # finish() says what goes out
    r.head_sent = True
    if r.head_only:
        body = b""
    if req._finished:
        return True
    req._finished = True
    rid = _check_range(req.request_id, 0xFFFF, "request id")
    rid = _packed(req.request_id, rid, _H)
    out = _finish(<unsigned int>rid, r._head_items, r._head_len, PyBytes_AS_STRING(body),
                  len(<bytes>body), 0)
    req._finish_with(out, r._head_len + len(<bytes>body))
    return True


##############################################################################
# ASGI: the scope  ############################################################
##############################################################################
#
# fastfcgi_py.asgi_scope's typed twin.  Building the scope was 70k of the
# 155k instructions an ASGI hello world cost under callgrind: a method call
# for every header's .encode("latin-1").  The params are str the parser
# decoded from latin-1, so their one-byte form is the bytes ASGI wants.

cdef inline object _latin1_bytes(object text):
    # text.encode("latin-1"), without the call for a one-byte str.
    if type(text) is str and PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        return PyBytes_FromStringAndSize(<char*>PyUnicode_DATA(text),
                                         PyUnicode_GET_LENGTH(text))
    return text.encode("latin-1")


cdef inline object _latin1_to_utf8(object text):
    # text.encode("latin-1").decode("utf-8", "replace"), likewise.
    if type(text) is str and PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        return PyUnicode_DecodeUTF8(<char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text),
                                    "replace")
    return text.encode("latin-1").decode("utf-8", "replace")


cdef inline bint _is_header_key(object key) except -1:
    # key[:5] == "HTTP_", but for the two CGI variables' copies.
    cdef Py_ssize_t n
    cdef const char* data
    if type(key) is not str or PyUnicode_KIND(key) != PyUnicode_1BYTE_KIND:
        return key[:5] == "HTTP_" and key != "HTTP_CONTENT_TYPE" and \
            key != "HTTP_CONTENT_LENGTH"
    n = PyUnicode_GET_LENGTH(key)
    data = <const char*>PyUnicode_DATA(key)
    if n < 5 or memcmp(data, b"HTTP_", 5) != 0:
        return False
    return not ((n == 17 and memcmp(data, b"HTTP_CONTENT_TYPE", 17) == 0) or
                (n == 19 and memcmp(data, b"HTTP_CONTENT_LENGTH", 19) == 0))


# HTTP_USER_AGENT -> (b"user-agent", the value last seen, its pair): a
# header whose value equals the last request's reuses its immutable
# (name, value) pair.
cdef dict _header_pairs = {}


cdef inline bint _same_text(object a, object b) except -1:
    # a == b for the params' str, in C when both are one byte a character
    # (values longer than the parser's cache are new objects each time).
    if a is b:
        return True
    if (type(a) is not str or type(b) is not str or PyUnicode_KIND(a) != PyUnicode_1BYTE_KIND
            or PyUnicode_KIND(b) != PyUnicode_1BYTE_KIND):
        return a == b
    return (PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b) and
            memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), PyUnicode_GET_LENGTH(a)) == 0)


cdef list _asgi_headers(dict params, object role):
    """The scope's headers. See `fastfcgi_py._asgi_headers`."""
    cdef list headers = []
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* known
    while PyDict_Next(params, &pos, &key, &value):
        if not _is_header_key(<object>key):
            continue
        known = PyDict_GetItem(_header_pairs, <object>key)
        if (known != NULL and (<tuple>known)[2] is not None
                and _same_text((<tuple>known)[1], <object>value)):
            headers.append((<tuple>known)[2])
            continue
        if known != NULL:
            name = (<tuple>known)[0]
        else:
            name = (<object>key)[5:].lower().replace("_", "-").encode("latin-1")
        pair = (name, _latin1_bytes(<object>value))
        if known != NULL or len(_header_pairs) < 512:   # the names a web server forwards repeat
            # Values past 1 KB are not kept: 512 names hold 1 MB at most.
            _header_pairs[<object>key] = (name, <object>value, pair) if len(pair[1]) <= 1024 \
                else (name, None, None)
        headers.append(pair)
    content_type = params.get("CONTENT_TYPE") or params.get("HTTP_CONTENT_TYPE")
    if content_type:
        headers.append((b"content-type", _latin1_bytes(content_type)))
    length = params.get("CONTENT_LENGTH") or params.get("HTTP_CONTENT_LENGTH")
    if length and length != "-1" and role != FCGI_AUTHORIZER:   # an authorizer gets no body
        headers.append((b"content-length", _latin1_bytes(length)))
    return headers


cdef object _address(object host, object port):
    """(host, port) for the scope. See `fastfcgi_py._address`."""
    cdef Py_ssize_t i, n
    cdef long number = 0
    cdef const char* digits
    if not host:
        return None
    if type(port) is not str or PyUnicode_KIND(port) != PyUnicode_1BYTE_KIND:
        return _py._address(host, port)
    n = PyUnicode_GET_LENGTH(port)
    digits = <const char*>PyUnicode_DATA(port)
    if n == 0 or n > 9:
        return _py._address(host, port)     # int()'s rules for the rest
    for i in range(n):
        if digits[i] < c'0' or digits[i] > c'9':
            return _py._address(host, port)
        number = number * 10 + (digits[i] - c'0')
    return (host, number)


##############################################################################
# ASGI: the response head  ####################################################
##############################################################################
#
# fastfcgi_py._asgi_head's typed twin: the bytes pairs of an
# http.response.start checked and copied as they are, where the pure code
# decodes them for Writer.head (8k of the 106k instructions a request).
# Anything it does not take as plain valid bytes goes the pure way, which
# says what is wrong.

@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _plain_header(object pair) noexcept:
    # A (name, value) of bytes that Writer.head takes once decoded: the
    # name an RFC 9110 token, the value no control character but HTAB.
    cdef const unsigned char* c
    cdef Py_ssize_t i, n
    if (type(pair) is not tuple and type(pair) is not list) or len(pair) != 2:
        return False
    name = pair[0]
    value = pair[1]
    if type(name) is not bytes or type(value) is not bytes:
        return False
    c = <const unsigned char*>PyBytes_AS_STRING(name)
    n = len(<bytes>name)
    if n == 0:
        return False
    for i in range(n):
        if c[i] >= 128 or not _TCHAR[c[i]]:
            return False
    c = <const unsigned char*>PyBytes_AS_STRING(value)
    for i in range(len(<bytes>value)):
        if (c[i] < 32 and c[i] != 9) or c[i] == 127:
            return False
    return True


def _asgi_head(writer, status, headers):
    """The CGI head of an http.response.start. See `fastfcgi_py._asgi_head`."""
    cdef Py_ssize_t size = 0, status_size
    cdef char* out
    if type(writer) is not Writer or (type(headers) is not list and type(headers) is not tuple):
        return _py._asgi_head(writer, status, headers)
    for pair in headers:
        if not _plain_header(pair):
            return _py._asgi_head(writer, status, headers)
        size += len(<bytes>pair[0]) + len(<bytes>pair[1]) + 4
    _head_items(status, (), &status_size)       # checks it as Writer.head does
    head = PyBytes_FromStringAndSize(NULL, status_size + size)
    out = PyBytes_AS_STRING(head)
    memcpy(out, b"Status: ", 8)
    out += 8
    memcpy(out, PyUnicode_DATA(status), status_size - 12)     # latin-1: one byte each
    out += status_size - 12
    memcpy(out, b"\r\n", 2)
    out += 2
    for pair in headers:
        size = len(<bytes>pair[0])
        memcpy(out, PyBytes_AS_STRING(pair[0]), size)
        out += size
        memcpy(out, b": ", 2)
        out += 2
        size = len(<bytes>pair[1])
        memcpy(out, PyBytes_AS_STRING(pair[1]), size)
        out += size
        memcpy(out, b"\r\n", 2)
        out += 2
    memcpy(out, b"\r\n", 2)
    return head


def asgi_scope(request, state=None):
    """The ASGI 3 http scope of ``request``. See `fastfcgi_py.asgi_scope`."""
    p = request.params
    if type(p) is not dict:
        return _py.asgi_scope(request, state)
    cdef dict params = <dict>p
    script_name = params.get("SCRIPT_NAME", "")
    path = script_name + params.get("PATH_INFO", "")
    raw_path = params.get("REQUEST_URI", "").partition("?")[0]
    if not path:
        path = _py._unquote(raw_path) or "/"
    https = params.get("HTTPS", "")
    secure = https.lower() in ("on", "1") or params.get("REQUEST_SCHEME") == "https"
    version = params.get("SERVER_PROTOCOL", "HTTP/1.1")[5:]
    role = request.role
    scope = {
        "type": "http",
        "asgi": _py._ASGI,
        "http_version": "2" if version == "2.0" else version or "1.1",
        "method": params.get("REQUEST_METHOD", "GET"),
        "scheme": "https" if secure else "http",
        "path": _latin1_to_utf8(path),
        "raw_path": _latin1_bytes(raw_path or path),
        "query_string": _latin1_bytes(params.get("QUERY_STRING", "")),
        "root_path": _latin1_to_utf8(script_name),
        "headers": _asgi_headers(params, role),
        "client": _address(params.get("REMOTE_ADDR"), params.get("REMOTE_PORT")),
        "server": _address(params.get("SERVER_ADDR") or params.get("SERVER_NAME"),
                           params.get("SERVER_PORT")),
        "extensions": {"http.response.pathsend": {},
                       "fastcgi": {"request": request,
                                   "role": "RESPONDER" if role == FCGI_RESPONDER else
                                   _ROLE_NAMES.get(role, str(role))}},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


# _ASGIResponse's typed twin.  An ASGI application awaits send() twice for
# the smallest response; as coroutines, with their frames and the checks
# in Python, the two were the largest part of the gateway's instructions.
# Here the common messages (a valid http.response.start, an
# http.response.body of bytes) are done in the call, which returns an
# awaitable that is already done; every other message goes to the pure
# coroutine, so whatever is refused is refused when awaited, with the same
# error, as on the pure core.

cdef object _EXHAUSTED = iter(())      # an iterator that stays at its end
cdef dict _status_lines = _py._STATUS_LINES


@cython.final
cdef class _Done:
    """An awaitable already done (its result None): what send() returns
    for a message it has sent.  A coroutine too (send, throw, close), so
    asyncio.create_task(send(message)) takes it as it takes the pure
    core's."""

    def __await__(self):
        return _EXHAUSTED

    def send(self, value):
        raise StopIteration

    def throw(self, typ, val=None, tb=None):
        raise (typ if val is None else val)

    def close(self):
        pass


cdef _Done _DONE = _Done()


cdef class _ASGIResponseCore:
    """The state of an `_ASGIResponse`, and its send, in C. See `fastfcgi_py._ASGIResponse`."""

    cdef public object request, status, headers, head_bytes, offload, make_head
    cdef public bint head_sent, complete, head_only, body_done

    def __init__(self, request, offload=None, make_head=_asgi_head):
        self.request = request
        self.offload = offload
        self.make_head = make_head
        self.head_only = request.params.get("REQUEST_METHOD") == "HEAD"

    # A Python function (binding), so it can carry the mark of a coroutine
    # function (_mark_coroutine_function, below the class).
    @cython.binding(True)
    def send(self, message):
        """ASGI's send: an awaitable (see the section comment)."""
        cdef _RequestCore request
        if type(message) is not dict or not isinstance(self.request, _RequestCore):
            return _py._ASGIResponseMethods.send(self, message)
        request = <_RequestCore>self.request
        kind = (<dict>message).get("type")
        if kind == "http.response.start":
            status = (<dict>message).get("status")
            status = _status_lines.get(status) if type(status) is int else None
            headers = (<dict>message).get("headers", ())
            if self.status is None and status is not None and \
                    (type(headers) is list or type(headers) is tuple):
                try:
                    self.head_bytes = self.make_head(request.connection.writer, status, headers)
                except Exception:
                    return _py._ASGIResponseMethods.send(self, message)
                self.status = status
                self.headers = headers
                return _DONE
        elif kind == "http.response.body":
            body = (<dict>message).get("body", b"")
            more = (<dict>message).get("more_body", False)
            if self.status is not None and not self.complete and not request._aborted and \
                    type(body) is bytes:
                waiting = self._body(request, body, more)
                return _DONE if waiting is None else waiting
        return _py._ASGIResponseMethods.send(self, message)

    def _send_body(self, body, more):
        """The body out. See `fastfcgi_py._ASGIResponseMethods._send_body`."""
        return self._body(self.request, body, more)

    cdef object _body(self, request, bytes body, more):
        if self.head_only:
            body = b""
        if not self.head_sent:
            self.head_sent = True
            body = self.head_bytes + body
        if more:
            if not body:
                return None
            request.print_stdout(body)
            return request.drain()
        self.complete = True
        request.finish(0, body)
        return None


class _ASGIResponse(_ASGIResponseCore, _py._ASGIResponseMethods):
    """One request's ASGI receive and send, its send in C. See `fastfcgi_py._ASGIResponse`."""

    __slots__ = ()


_py._mark_coroutine_function(_ASGIResponseCore.send)


##############################################################################
# The servers on this core  ###################################################
##############################################################################
#
# The gateways and servers are fastfcgi_py's classes, which take the core
# they run on as ``core=``.  Under fastfcgi's names they are subclasses that
# make this module the default core, so that ``fastfcgi.Server(...)`` runs
# the compiled core.  The one thing more is WSGIGateway.__call__'s typed
# twin: its frame, orchestrating the hot steps, was 1.7k of 51k instructions
# a request under callgrind (3%); every branch off the common answer calls
# the same policy methods as the pure one.

_this_core = _sys.modules[__name__]


class WSGIGateway(_py.WSGIGateway):
    """fastfcgi_py.WSGIGateway, on the compiled core unless told otherwise. See `fastfcgi_py.WSGIGateway`."""

    core = _this_core

    def __call__(self, request):
        """Run the application on request. See `fastfcgi_py.WSGIGateway.__call__`."""
        if self.core is not _this_core or type(self) is not WSGIGateway:
            return _py.WSGIGateway.__call__(self, request)   # another core, or a subclass
        env = _wsgi_environ(self._constant_keys, request)
        response = _Response(request, env.get("REQUEST_METHOD") == "HEAD")
        result = None
        try:
            result = self.app(env, response.start_response)
            if not _send_list(request, response, result):
                self._send(request, response, result)
        except _RequestError as exc:
            response.status = self._request_failed(request, response.head_sent, exc) \
                or response.status
        except Exception:
            response.status = self._app_failed(request, response.head_sent) or response.status
        finally:
            if type(result) is not list and result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self._app_failed(request, response.head_sent)
        return response.status


class Server(_py.Server):
    """fastfcgi_py.Server, on the compiled core unless told otherwise. See `fastfcgi_py.Server`."""

    core = _this_core


class HTTPServer(_py.HTTPServer):
    """fastfcgi_py.HTTPServer, on the compiled core unless told otherwise. See `fastfcgi_py.HTTPServer`."""

    core = _this_core


class ASGIGateway(_py.ASGIGateway):
    """fastfcgi_py.ASGIGateway, on the compiled core unless told otherwise. See `fastfcgi_py.ASGIGateway`."""

    core = _this_core


class AsyncServer(_py.AsyncServer):
    """fastfcgi_py.AsyncServer, on the compiled core unless told otherwise. See `fastfcgi_py.AsyncServer`."""

    core = _this_core


##############################################################################
# Status: a worker's scoreboard row  ##########################################
##############################################################################
#
# fastfcgi_py.WorkerRow's typed twin: what a worker stores for every request
# (busy since when, the status class, the duration and its histogram
# bucket) goes straight into the shared memory.  Through memoryview items
# it cost 14k instructions a request under callgrind, 30% of a request.
# The row's layout is fastfcgi_py's (its _W_ constants).

cdef Py_ssize_t _W_BUSY = _py._W_BUSY, _W_CLASSES = _py._W_CLASSES, _W_SUM = _py._W_SUM
cdef Py_ssize_t _W_LAST = _py._W_LAST, _W_CONNS = _py._W_CONNS, _W_REJECTED = _py._W_REJECTED
cdef Py_ssize_t _W_TEXT_LEN = _py._W_TEXT_LEN, _W_BUCKETS = _py._W_BUCKETS
cdef Py_ssize_t _W_TEXT = _py._W_TEXT, _ROW = _py._ROW
cdef Py_ssize_t _W_QUEUE_SUM = _py._W_QUEUE_SUM, _W_QUEUE_BUCKETS = _py._W_QUEUE_BUCKETS
cdef Py_ssize_t _W_QUEUE_DROPPED = _py._W_QUEUE_DROPPED
cdef Py_ssize_t _W_LAST_CPU = _py._W_LAST_CPU, _W_LAST_RSS = _py._W_LAST_RSS
cdef Py_ssize_t _W_RECYCLE = _py._W_RECYCLE
cdef Py_ssize_t _W_CLIENT = _py._W_CLIENT, _W_CLIENT_LEN = _py._W_CLIENT_LEN
cdef Py_ssize_t _CLIENT_BYTES = _py._CLIENT_BYTES
_client_text = _py._client_text
cdef double _bounds[32]
cdef int _bounds_count = len(_py.DURATION_BUCKETS)
for _i, _bound in enumerate(_py.DURATION_BUCKETS):
    _bounds[_i] = _bound
_monotonic = _py.time.monotonic
_request_text = _py._request_text
_queue_wait_of = _py._queue_wait_of


cdef Py_ssize_t _TEXT_BYTES = _py._TEXT_BYTES


cdef extern from "Python.h":
    # Without Cython's "except NULL": a str with no UTF-8 form is not an error here.
    const char* _utf8_of "PyUnicode_AsUTF8AndSize" (object, Py_ssize_t*)
    void _clear_error "PyErr_Clear" ()


cdef Py_ssize_t _copy_utf8(char* out, Py_ssize_t at, value,
                           Py_ssize_t most=_TEXT_BYTES) except -2:
    """``value``'s UTF-8 into out[at:], cut at ``most``; the new end,
    or -1 when ``value`` is not a str with a UTF-8 form."""
    cdef Py_ssize_t size
    cdef const char* data
    if type(value) is not str:
        return -1
    data = _utf8_of(value, &size)
    if data == NULL:
        _clear_error()
        return -1
    if size > most - at:
        size = most - at
    memcpy(out + at, data, size)
    return at + size


cdef inline int _bucket(double seconds) noexcept:
    # bisect_left(DURATION_BUCKETS, seconds): the first bound >= seconds.
    cdef int i = 0
    while i < _bounds_count and _bounds[i] < seconds:
        i += 1
    return i


cdef class WorkerRow:
    """fastfcgi_py.WorkerRow, typed. See `fastfcgi_py.WorkerRow`."""

    cdef readonly object board
    cdef readonly int slot
    cdef unsigned char[::1] _memory     # holds the mapping's buffer
    cdef double* d
    cdef uint64_t* q

    def __init__(self, board, int slot):
        cdef Py_ssize_t base = board._base(slot)
        self.board = board
        self.slot = slot
        self._memory = board.memory
        if self._memory.shape[0] < 8 * (base + _ROW):
            raise ValueError("slot %d is past the scoreboard" % slot)
        self.d = <double*>&self._memory[8 * base]
        self.q = <uint64_t*>self.d

    def busy(self, double since):
        """Busy since ``since`` (monotonic), or idle with 0.0."""
        self.d[_W_BUSY] = since

    def began(self, request, bint show=True, bint queued=True, double busy=0.0):
        """The worker runs ``request``: shown, its queue wait counted (and
        returned, or None). See `fastfcgi_py.WorkerRow.began`."""
        # _request_text's "METHOD URI", copied from the str's own UTF-8
        # (an ASCII str keeps it: no new object); what has none (a lone
        # surrogate) goes the pure way.
        cdef char* out = <char*>&self.q[_W_TEXT]
        cdef Py_ssize_t n = -1
        cdef bytes text
        cdef PyObject* method
        cdef PyObject* uri
        cdef PyObject* start
        params = request.params
        if queued:
            # Most requests have no X-Request-Start: one lookup.
            start = PyDict_GetItem(params, "HTTP_X_REQUEST_START") if type(params) is dict \
                else NULL
            wait = None
            if start != NULL or type(params) is not dict:
                wait = _queue_wait_of(request)
                if wait is not None:
                    self.queued(wait)
        if not show:
            return wait if queued else None
        if busy:
            self.d[_W_BUSY] = busy
        if type(params) is dict:
            method = PyDict_GetItem(params, "REQUEST_METHOD")
            uri = PyDict_GetItem(params, "REQUEST_URI")
            if uri == NULL or not <object>uri:
                uri = PyDict_GetItem(params, "PATH_INFO")
            n = _copy_utf8(out, 0, <object>method if method != NULL else "-")
            if n >= 0 and n < _TEXT_BYTES:
                out[n] = b" "
                n = _copy_utf8(out, n + 1, <object>uri if uri != NULL else "")
        if n < 0:
            text = _request_text(params)
            n = len(text)
            memcpy(out, PyBytes_AS_STRING(text), n)
        self.q[_W_TEXT_LEN] = n
        # Its client: REMOTE_ADDR, or what _client_text makes of the rest.
        n = -1
        if type(params) is dict:
            uri = PyDict_GetItem(params, "REMOTE_ADDR")
            n = _copy_utf8(<char*>&self.q[_W_CLIENT], 0, <object>uri if uri != NULL else "",
                           _CLIENT_BYTES)
        if n < 0:
            text = _client_text(params)
            n = len(text)
            memcpy(<char*>&self.q[_W_CLIENT], PyBytes_AS_STRING(text), n)
        self.q[_W_CLIENT_LEN] = n
        return wait if queued else None

    def done(self, status, double duration):
        """A request ended with ``status`` after ``duration`` seconds."""
        self._done(status, duration)

    def finished(self, status, since=None):
        """done() for the request that began at ``since`` (default: the busy mark), then idle."""
        cdef double start = self.d[_W_BUSY] if since is None else since
        self.d[_W_BUSY] = 0.0
        self._done(status, _monotonic() - start if start > 0 else 0.0)

    def queued(self, double seconds):
        """The request waited ``seconds`` before the worker took it."""
        self.d[_W_QUEUE_SUM] += seconds
        self.q[_W_QUEUE_BUCKETS + _bucket(seconds)] += 1

    def queue_dropped(self):
        self.q[_W_QUEUE_DROPPED] += 1

    def connection(self):
        self.q[_W_CONNS] += 1

    def rejected(self):
        self.q[_W_REJECTED] += 1

    def cost(self, double cpu, uint64_t rss):
        """What the last request cost. See `fastfcgi_py.WorkerRow.cost`."""
        self.d[_W_LAST_CPU] = cpu
        self.q[_W_LAST_RSS] = rss

    def recycling(self, uint64_t reason):
        """The worker ends by itself. See `fastfcgi_py.WorkerRow.recycling`."""
        self.q[_W_RECYCLE] = reason

    def current_request(self):
        return self.board.current_request(self.slot)

    cdef void _done(self, status, double duration):
        cdef long c = 6
        if status:
            c = status // 100 if type(status) is int else ord(status[0]) - 48
        self.q[_W_CLASSES + (c - 1 if 1 <= c <= 5 else 5)] += 1
        self.d[_W_SUM] += duration
        self.d[_W_LAST] = duration
        self.q[_W_BUCKETS + _bucket(duration)] += 1
