/*
 * Compiled fcrypt and rxkad packet sealing for afsfuse: the hot path of rxkad (every DATA
 * packet is checksummed, and at level crypt wholly encrypted).  afsfuse/rx/fcrypt.py holds
 * the cipher's constants and the pure-Python reference of everything here; it hands this
 * module the round tables once, through init(), so the numbers exist in one place only.
 *
 * Interface (byte strings big-endian, as on the wire; "buffer" = any contiguous buffer):
 *   init(t0, t1, t2, t3)            four 1024-byte tables: 256 round-function words each
 *   pcbc_encrypt(schedule, iv, data) -> bytes   schedule = 16 words (64 bytes); a partial
 *                                               final block is zero-padded
 *   pcbc_decrypt(schedule, iv, data) -> bytes   data must be whole 8-byte blocks
 *   seal_packet(context, level, call_number, channel, seq, data) -> (cksum, wire)
 *   unseal_packet(context, level, call_number, channel, seq, cksum, check, payload)
 *       -> the user data (bytes), or a fault number (int, fcrypt.PacketFault)
 * A packet context is 80 bytes: the schedule, the IV (the session key), then preSeq.
 *
 * unseal_packet reads network data: every length is checked before any byte is read, and
 * nothing is decrypted beyond what the seal word claims (and the packet holds).
 *
 * SPDX-License-Identifier: Apache-2.0
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 8
#define ROUND_KEYS 16
#define CONTEXT_SIZE (ROUND_KEYS * 4 + 2 * BLOCK)
#define MAX_SEALED_DATA 0xFFFF
/* Blocks rounds_4 works on together. */
#define LANES 4

/* rounds() is large, but must be inlined in each block loop to keep its keys in place. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

enum level { LEVEL_CLEAR = 0, LEVEL_AUTH = 1, LEVEL_CRYPT = 2 };
/* Same numbers as fcrypt.PacketFault. */
enum fault { FAULT_CHECKSUM = 1, FAULT_SHORT, FAULT_NOT_BLOCKS, FAULT_SEAL, FAULT_LENGTH };

/* The round function as four lookups: S-box output already in place and rotated. */
static uint32_t round_table[4][256];
static int tables_loaded;

struct packet_key {
    uint32_t ks[ROUND_KEYS];
    uint32_t iv[2];
    uint32_t pre_seq[2];
};

static inline uint32_t load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/*
 * The sixteen rounds with the round keys folded into the halves.  Write a block's halves as
 * one sequence: y[-1] = the half the first round updates, y[0] = the other, and
 * y[j+1] = y[j-1] ^ F(y[j] ^ K[j]) for the round keys K[0..15] in the order the rounds use
 * them; the rounds' output is (y[15], y[16]).  Carrying s[j] = y[j] ^ K[j] instead (with
 * K[-1] = K[16] = 0) turns a round into
 *     s[j+1] = s[j-1] ^ (K[j-1] ^ K[j+1]) ^ F(s[j]),
 * where everything but F(s[j]) is known a round early: the key XOR leaves the chain of
 * dependent work that bounds PCBC encryption (each block needs the previous one).
 */
struct folded_keys {
    uint32_t first;            /* K[0], XORed into y[0] */
    uint32_t step[ROUND_KEYS]; /* K[j-1] ^ K[j+1], XORed in by round j */
    uint32_t last;             /* K[15], XORed out of s[15] */
};

enum direction { ENCRYPT, DECRYPT };

/* Encryption uses the schedule's keys first to last (left half updated first), decryption
 * last to first (right half first). */
static void fold_keys(const uint32_t *ks, enum direction direction, struct folded_keys *fk)
{
    uint32_t k[ROUND_KEYS + 2] = {0}; /* k[j + 1] = K[j] */
    for (int j = 0; j < ROUND_KEYS; j++)
        k[j + 1] = ks[direction == ENCRYPT ? j : ROUND_KEYS - 1 - j];
    fk->first = k[1];
    for (int j = 0; j < ROUND_KEYS; j++)
        fk->step[j] = k[j] ^ k[j + 2];
    fk->last = k[ROUND_KEYS];
}

/* s[j+1] from s[j-1] (known early) and s[j]. */
static inline uint32_t folded_round(uint32_t early, uint32_t s, uint32_t step)
{
    uint32_t low = round_table[3][s & 0xff] ^ round_table[2][(s >> 8) & 0xff];
    uint32_t high = round_table[0][s >> 24] ^ round_table[1][(s >> 16) & 0xff];
    return (early ^ step ^ low) ^ high;
}

/* The rounds on one block: a = y[-1], b = y[0] in; a = y[15], b = y[16] out. */
static ALWAYS_INLINE void rounds(const struct folded_keys *fk, uint32_t *a, uint32_t *b)
{
    uint32_t s_odd = *a, s_even = *b ^ fk->first;
#pragma GCC unroll 8
    for (int j = 0; j < ROUND_KEYS; j += 2) {
        s_odd = folded_round(s_odd, s_even, fk->step[j]);
        s_even = folded_round(s_even, s_odd, fk->step[j + 1]);
    }
    *a = s_odd ^ fk->last;
    *b = s_even;
}

static inline uint32_t round_function(uint32_t x)
{
    return (round_table[0][x >> 24] ^ round_table[1][(x >> 16) & 0xff]) ^
           (round_table[2][(x >> 8) & 0xff] ^ round_table[3][x & 0xff]);
}

/*
 * Decryption's rounds on LANES independent blocks at once: one block is a single chain of
 * dependent lookups, so the CPU overlaps several.  Spelled out lane by lane because
 * compilers do not keep arrays of lanes in registers.  Here the limit is instructions, not
 * latency, so the keys are not folded (measured: folding, or unrolling the loop, is slower).
 */
static inline void rounds_4(const uint32_t *ks, uint32_t l[LANES], uint32_t r[LANES])
{
    uint32_t l0 = l[0], l1 = l[1], l2 = l[2], l3 = l[3];
    uint32_t r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
    for (int i = ROUND_KEYS - 1; i > 0; i -= 2) {
        uint32_t k = ks[i];
        r0 ^= round_function(l0 ^ k);
        r1 ^= round_function(l1 ^ k);
        r2 ^= round_function(l2 ^ k);
        r3 ^= round_function(l3 ^ k);
        k = ks[i - 1];
        l0 ^= round_function(r0 ^ k);
        l1 ^= round_function(r1 ^ k);
        l2 ^= round_function(r2 ^ k);
        l3 ^= round_function(r3 ^ k);
    }
    l[0] = l0;
    l[1] = l1;
    l[2] = l2;
    l[3] = l3;
    r[0] = r0;
    r[1] = r1;
    r[2] = r2;
    r[3] = r3;
}

/* ECB on one block, as the header checksum needs. */
static void encrypt_block(const uint32_t *ks, uint32_t *left, uint32_t *right)
{
    struct folded_keys fk;
    fold_keys(ks, ENCRYPT, &fk);
    rounds(&fk, left, right);
}

/* PCBC-encrypt nblocks whole blocks; v is the chaining value, updated. */
static void pcbc_encrypt_blocks(const uint32_t *ks, uint32_t v[2],
                                const unsigned char *restrict in, unsigned char *restrict out,
                                Py_ssize_t nblocks)
{
    struct folded_keys fk;
    fold_keys(ks, ENCRYPT, &fk);
    uint32_t vl = v[0], vr = v[1];
    for (Py_ssize_t b = 0; b < nblocks; b++, in += BLOCK, out += BLOCK) {
        uint32_t pl = load_be32(in), pr = load_be32(in + 4);
        uint32_t l = pl ^ vl, r = pr ^ vr;
        rounds(&fk, &l, &r);
        store_be32(out, l);
        store_be32(out + 4, r);
        vl = pl ^ l;
        vr = pr ^ r;
    }
    v[0] = vl;
    v[1] = vr;
}

/* PCBC-encrypt a final block of 1..7 bytes, zero-padded to a whole block in out. */
static void pcbc_encrypt_tail(const uint32_t *ks, uint32_t v[2], const unsigned char *in,
                              Py_ssize_t len, unsigned char *out)
{
    unsigned char block[BLOCK] = {0};
    memcpy(block, in, (size_t)len);
    pcbc_encrypt_blocks(ks, v, block, out, 1);
}

/* PCBC-decrypt nblocks whole blocks; in and out must not overlap.  Unlike encryption, the
 * block decryptions do not depend on each other (only the XORs after them do). */
static void pcbc_decrypt_blocks(const uint32_t *ks, uint32_t v[2],
                                const unsigned char *restrict in, unsigned char *restrict out,
                                Py_ssize_t nblocks)
{
    struct folded_keys fk;
    fold_keys(ks, DECRYPT, &fk);
    uint32_t vl = v[0], vr = v[1];
    Py_ssize_t b = 0;
    for (; b + LANES <= nblocks; b += LANES, in += LANES * BLOCK, out += LANES * BLOCK) {
        uint32_t l[LANES], r[LANES];
        for (int j = 0; j < LANES; j++) {
            l[j] = load_be32(in + j * BLOCK);
            r[j] = load_be32(in + j * BLOCK + 4);
        }
        rounds_4(ks, l, r);
        for (int j = 0; j < LANES; j++) {
            uint32_t pl = l[j] ^ vl, pr = r[j] ^ vr;
            store_be32(out + j * BLOCK, pl);
            store_be32(out + j * BLOCK + 4, pr);
            vl = load_be32(in + j * BLOCK) ^ pl;
            vr = load_be32(in + j * BLOCK + 4) ^ pr;
        }
    }
    for (; b < nblocks; b++, in += BLOCK, out += BLOCK) {
        uint32_t cl = load_be32(in), cr = load_be32(in + 4);
        uint32_t l = cl, r = cr;
        rounds(&fk, &r, &l);
        l ^= vl;
        r ^= vr;
        store_be32(out, l);
        store_be32(out + 4, r);
        vl = cl ^ l;
        vr = cr ^ r;
    }
    v[0] = vl;
    v[1] = vr;
}

static int require_tables(void)
{
    if (!tables_loaded) {
        PyErr_SetString(PyExc_RuntimeError, "_fcrypt.init() was not called");
        return -1;
    }
    return 0;
}

static void load_schedule(const unsigned char *packed, uint32_t ks[ROUND_KEYS])
{
    for (int i = 0; i < ROUND_KEYS; i++)
        ks[i] = load_be32(packed + 4 * i);
}

static PyObject *fc_init(PyObject *self, PyObject *args)
{
    Py_buffer tables[4];
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &tables[0], &tables[1], &tables[2], &tables[3]))
        return NULL;
    int ok = 1;
    for (int t = 0; t < 4; t++)
        ok &= tables[t].len == 256 * 4;
    if (ok) {
        for (int t = 0; t < 4; t++)
            for (int i = 0; i < 256; i++)
                round_table[t][i] = load_be32((const unsigned char *)tables[t].buf + 4 * i);
        tables_loaded = 1;
    }
    for (int t = 0; t < 4; t++)
        PyBuffer_Release(&tables[t]);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "each round table must be 1024 bytes");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Shared argument handling; on success the caller owns the three buffers. */
static int parse_pcbc_args(PyObject *args, Py_buffer *sched, Py_buffer *iv, Py_buffer *data,
                           uint32_t ks[ROUND_KEYS], uint32_t v[2])
{
    if (require_tables() < 0)
        return -1;
    if (!PyArg_ParseTuple(args, "y*y*y*", sched, iv, data))
        return -1;
    if (sched->len != ROUND_KEYS * 4 || iv->len != BLOCK) {
        PyBuffer_Release(sched);
        PyBuffer_Release(iv);
        PyBuffer_Release(data);
        PyErr_SetString(PyExc_ValueError,
                        "fcrypt needs a 64-byte packed schedule and an 8-byte IV");
        return -1;
    }
    load_schedule(sched->buf, ks);
    v[0] = load_be32(iv->buf);
    v[1] = load_be32((const unsigned char *)iv->buf + 4);
    return 0;
}

static void release3(Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    PyBuffer_Release(a);
    PyBuffer_Release(b);
    PyBuffer_Release(c);
}

static PyObject *fc_pcbc_encrypt(PyObject *self, PyObject *args)
{
    Py_buffer sched, iv, data;
    uint32_t ks[ROUND_KEYS], v[2];
    if (parse_pcbc_args(args, &sched, &iv, &data, ks, v) < 0)
        return NULL;
    Py_ssize_t whole = data.len / BLOCK, tail = data.len % BLOCK;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (whole + (tail != 0)) * BLOCK);
    if (result != NULL) {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        pcbc_encrypt_blocks(ks, v, data.buf, out, whole);
        if (tail)
            pcbc_encrypt_tail(ks, v, (const unsigned char *)data.buf + whole * BLOCK, tail,
                              out + whole * BLOCK);
    }
    release3(&sched, &iv, &data);
    return result;
}

static PyObject *fc_pcbc_decrypt(PyObject *self, PyObject *args)
{
    Py_buffer sched, iv, data;
    uint32_t ks[ROUND_KEYS], v[2];
    if (parse_pcbc_args(args, &sched, &iv, &data, ks, v) < 0)
        return NULL;
    if (data.len % BLOCK) {
        release3(&sched, &iv, &data);
        PyErr_SetString(PyExc_ValueError,
                        "PCBC ciphertext must be a whole number of 8-byte blocks");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL)
        pcbc_decrypt_blocks(ks, v, data.buf, (unsigned char *)PyBytes_AS_STRING(result),
                            data.len / BLOCK);
    release3(&sched, &iv, &data);
    return result;
}

/* ----- rxkad DATA packets ---------------------------------------------------------------- */

/* The arguments every packet call starts with: context, level, call_number, channel, seq. */
struct packet_args {
    struct packet_key key;
    int level;
    uint32_t call_number, channel, seq;
};

static int parse_u32(PyObject *obj, uint32_t *out)
{
    unsigned long value = PyLong_AsUnsignedLongMask(obj);
    if (value == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint32_t)value;
    return 0;
}

static int parse_packet_args(PyObject *const *args, struct packet_args *p)
{
    Py_buffer context;
    if (require_tables() < 0)
        return -1;
    if (PyObject_GetBuffer(args[0], &context, PyBUF_SIMPLE) < 0)
        return -1;
    if (context.len != CONTEXT_SIZE) {
        PyBuffer_Release(&context);
        PyErr_SetString(PyExc_ValueError, "an rxkad packet context is 80 bytes");
        return -1;
    }
    const unsigned char *c = context.buf;
    load_schedule(c, p->key.ks);
    p->key.iv[0] = load_be32(c + 64);
    p->key.iv[1] = load_be32(c + 68);
    p->key.pre_seq[0] = load_be32(c + 72);
    p->key.pre_seq[1] = load_be32(c + 76);
    PyBuffer_Release(&context);

    long level = PyLong_AsLong(args[1]);
    if (level == -1 && PyErr_Occurred())
        return -1;
    if (level < LEVEL_CLEAR || level > LEVEL_CRYPT) {
        PyErr_SetString(PyExc_ValueError, "rxkad levels are 0 (clear), 1 (auth), 2 (crypt)");
        return -1;
    }
    p->level = (int)level;
    if (parse_u32(args[2], &p->call_number) < 0 || parse_u32(args[3], &p->channel) < 0 ||
        parse_u32(args[4], &p->seq) < 0)
        return -1;
    return 0;
}

static uint32_t header_checksum(const struct packet_args *p)
{
    uint32_t l = p->call_number ^ p->key.pre_seq[0];
    uint32_t r = (((p->channel & 3) << 30) | (p->seq & 0x3FFFFFFF)) ^ p->key.pre_seq[1];
    encrypt_block(p->key.ks, &l, &r);
    uint32_t cksum = r >> 16;
    return cksum ? cksum : 1;
}

static uint32_t seal_word(const struct packet_args *p, Py_ssize_t user_len)
{
    return (((p->seq ^ p->call_number) & 0xFFFF) << 16) | (uint32_t)user_len;
}

/* The wire payload of a sealed DATA packet (levels auth and crypt). */
static PyObject *sealed_payload(const struct packet_args *p, const unsigned char *data,
                                Py_ssize_t len)
{
    uint32_t word = seal_word(p, len);
    if (p->level == LEVEL_AUTH) {
        /* [word][data], at least one block; only the first block is encrypted. */
        Py_ssize_t out_len = len + 4 < BLOCK ? BLOCK : len + 4;
        PyObject *wire = PyBytes_FromStringAndSize(NULL, out_len);
        if (wire == NULL)
            return NULL;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(wire);
        unsigned char first[BLOCK] = {0};
        store_be32(first, word);
        memcpy(first + 4, data, (size_t)(len < 4 ? len : 4));
        uint32_t zero_iv[2] = {0, 0};
        pcbc_encrypt_blocks(p->key.ks, zero_iv, first, out, 1);
        if (len > 4)
            memcpy(out + BLOCK, data + 4, (size_t)(len - 4));
        return wire;
    }
    /* Crypt: [word][0][data][zero pad], all PCBC-encrypted with the session key as IV. */
    Py_ssize_t whole = len / BLOCK, tail = len % BLOCK;
    PyObject *wire = PyBytes_FromStringAndSize(NULL, (1 + whole + (tail != 0)) * BLOCK);
    if (wire == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(wire);
    unsigned char header[BLOCK] = {0};
    store_be32(header, word);
    uint32_t v[2] = {p->key.iv[0], p->key.iv[1]};
    pcbc_encrypt_blocks(p->key.ks, v, header, out, 1);
    pcbc_encrypt_blocks(p->key.ks, v, data, out + BLOCK, whole);
    if (tail)
        pcbc_encrypt_tail(p->key.ks, v, data + whole * BLOCK, tail, out + (1 + whole) * BLOCK);
    return wire;
}

/* (cksum, wire), consuming both references even on failure. */
static PyObject *checksum_and_wire(PyObject *cksum, PyObject *wire)
{
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(cksum);
        Py_DECREF(wire);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, cksum);
    PyTuple_SET_ITEM(pair, 1, wire);
    return pair;
}

static PyObject *fc_seal_packet(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct packet_args p;
    Py_buffer data;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_packet(context, level, call_number, channel, seq, data)");
        return NULL;
    }
    if (parse_packet_args(args, &p) < 0)
        return NULL;
    PyObject *cksum = PyLong_FromUnsignedLong(header_checksum(&p));
    if (cksum == NULL)
        return NULL;
    if (p.level == LEVEL_CLEAR) {
        PyObject *wire = PyBytes_FromObject(args[5]);
        if (wire == NULL) {
            Py_DECREF(cksum);
            return NULL;
        }
        return checksum_and_wire(cksum, wire);
    }
    if (PyObject_GetBuffer(args[5], &data, PyBUF_SIMPLE) < 0) {
        Py_DECREF(cksum);
        return NULL;
    }
    PyObject *wire = NULL;
    if (data.len > MAX_SEALED_DATA)
        PyErr_SetString(PyExc_ValueError, "rxkad seals at most 65535 user bytes per packet");
    else
        wire = sealed_payload(&p, data.buf, data.len);
    PyBuffer_Release(&data);
    if (wire == NULL) {
        Py_DECREF(cksum);
        return NULL;
    }
    return checksum_and_wire(cksum, wire);
}

/* The user data of a sealed payload, or a fault number; len >= BLOCK on entry. */
static PyObject *opened_payload(const struct packet_args *p, const unsigned char *in,
                                Py_ssize_t len)
{
    uint32_t zero_iv[2] = {0, 0};
    uint32_t v[2] = {p->key.iv[0], p->key.iv[1]};
    uint32_t *chain = p->level == LEVEL_AUTH ? zero_iv : v;
    unsigned char first[BLOCK];
    if (p->level == LEVEL_CRYPT && len % BLOCK)
        return PyLong_FromLong(FAULT_NOT_BLOCKS);
    pcbc_decrypt_blocks(p->key.ks, chain, in, first, 1);

    uint32_t word = load_be32(first);
    if (word >> 16 != ((p->seq ^ p->call_number) & 0xFFFF))
        return PyLong_FromLong(FAULT_SEAL);
    Py_ssize_t user_len = word & 0xFFFF;
    Py_ssize_t header = p->level == LEVEL_AUTH ? 4 : BLOCK;
    if (user_len > len - header)
        return PyLong_FromLong(FAULT_LENGTH);

    PyObject *result = PyBytes_FromStringAndSize(NULL, user_len);
    if (result == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    if (p->level == LEVEL_AUTH) {
        /* user_len <= len - 4, so in[8 .. 4 + user_len) lies within the payload. */
        memcpy(out, first + 4, (size_t)(user_len < 4 ? user_len : 4));
        if (user_len > 4)
            memcpy(out + 4, in + BLOCK, (size_t)(user_len - 4));
        return result;
    }
    /* Crypt: 8 + user_len <= len and len is whole blocks, so every block read exists. */
    Py_ssize_t whole = user_len / BLOCK, tail = user_len % BLOCK;
    pcbc_decrypt_blocks(p->key.ks, v, in + BLOCK, out, whole);
    if (tail) {
        unsigned char last[BLOCK];
        pcbc_decrypt_blocks(p->key.ks, v, in + (1 + whole) * BLOCK, last, 1);
        memcpy(out + whole * BLOCK, last, (size_t)tail);
    }
    return result;
}

static PyObject *fc_unseal_packet(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct packet_args p;
    uint32_t cksum;
    Py_buffer payload;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "unseal_packet(context, level, call_number, channel, "
                                         "seq, cksum, check, payload)");
        return NULL;
    }
    if (parse_packet_args(args, &p) < 0 || parse_u32(args[5], &cksum) < 0)
        return NULL;
    int check = PyObject_IsTrue(args[6]);
    if (check < 0)
        return NULL;
    if (check && cksum != header_checksum(&p))
        return PyLong_FromLong(FAULT_CHECKSUM);
    if (p.level == LEVEL_CLEAR)
        return PyBytes_FromObject(args[7]);
    if (PyObject_GetBuffer(args[7], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = payload.len < BLOCK ? PyLong_FromLong(FAULT_SHORT)
                                           : opened_payload(&p, payload.buf, payload.len);
    PyBuffer_Release(&payload);
    return result;
}

static PyMethodDef fc_methods[] = {
    {"init", fc_init, METH_VARARGS, "Load the four round-function tables (1024 bytes each)."},
    {"pcbc_encrypt", fc_pcbc_encrypt, METH_VARARGS,
     "pcbc_encrypt(schedule, iv, data) -> bytes; zero-pads a partial final block."},
    {"pcbc_decrypt", fc_pcbc_decrypt, METH_VARARGS,
     "pcbc_decrypt(schedule, iv, data) -> bytes; data must be whole 8-byte blocks."},
    {"seal_packet", (PyCFunction)(void (*)(void))fc_seal_packet, METH_FASTCALL,
     "seal_packet(context, level, call_number, channel, seq, data) -> (cksum, wire)"},
    {"unseal_packet", (PyCFunction)(void (*)(void))fc_unseal_packet, METH_FASTCALL,
     "unseal_packet(context, level, call_number, channel, seq, cksum, check, payload)"
     " -> user data, or a fault number"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fc_module = {
    PyModuleDef_HEAD_INIT, "_fcrypt", "Compiled fcrypt and rxkad packet sealing.", -1,
    fc_methods,
};

PyMODINIT_FUNC PyInit__fcrypt(void)
{
    return PyModule_Create(&fc_module);
}
