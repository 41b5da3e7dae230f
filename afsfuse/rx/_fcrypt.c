/*
 * Compiled fcrypt PCBC for afsfuse: the hot path of rxkad crypt level (sealing and
 * unsealing every DATA packet).  afsfuse/rx/fcrypt.py holds the cipher's constants and
 * the pure-Python reference; it hands this module the round tables once, through init(),
 * so the numbers exist in one place only.
 *
 * Interface (all byte strings big-endian, as on the wire):
 *   init(t0, t1, t2, t3)            four 1024-byte tables: 256 round-function words each
 *   pcbc_encrypt(schedule, iv, data) -> bytes   schedule = 16 words (64 bytes); a partial
 *                                               final block is zero-padded
 *   pcbc_decrypt(schedule, iv, data) -> bytes   data must be whole 8-byte blocks
 *
 * SPDX-License-Identifier: Apache-2.0
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 8
#define ROUND_KEYS 16

static uint32_t round_table[4][256];
static int tables_loaded;

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

static inline uint32_t round_function(uint32_t x)
{
    return round_table[0][x >> 24] ^ round_table[1][(x >> 16) & 0xff] ^
           round_table[2][(x >> 8) & 0xff] ^ round_table[3][x & 0xff];
}

static void encrypt_block(const uint32_t *ks, uint32_t *left, uint32_t *right)
{
    uint32_t l = *left, r = *right;
    for (int i = 0; i < ROUND_KEYS; i += 2) {
        l ^= round_function(r ^ ks[i]);
        r ^= round_function(l ^ ks[i + 1]);
    }
    *left = l;
    *right = r;
}

static void decrypt_block(const uint32_t *ks, uint32_t *left, uint32_t *right)
{
    uint32_t l = *left, r = *right;
    for (int i = ROUND_KEYS - 1; i > 0; i -= 2) {
        r ^= round_function(l ^ ks[i]);
        l ^= round_function(r ^ ks[i - 1]);
    }
    *left = l;
    *right = r;
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
                           uint32_t ks[ROUND_KEYS])
{
    if (!tables_loaded) {
        PyErr_SetString(PyExc_RuntimeError, "_fcrypt.init() was not called");
        return -1;
    }
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
    for (int i = 0; i < ROUND_KEYS; i++)
        ks[i] = load_be32((const unsigned char *)sched->buf + 4 * i);
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
    uint32_t ks[ROUND_KEYS];
    if (parse_pcbc_args(args, &sched, &iv, &data, ks) < 0)
        return NULL;

    Py_ssize_t len = data.len;
    Py_ssize_t out_len = (len + BLOCK - 1) / BLOCK * BLOCK;
    PyObject *result = PyBytes_FromStringAndSize(NULL, out_len);
    if (result == NULL) {
        release3(&sched, &iv, &data);
        return NULL;
    }
    const unsigned char *in = data.buf;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    uint32_t vl = load_be32(iv.buf), vr = load_be32((const unsigned char *)iv.buf + 4);

    for (Py_ssize_t off = 0; off < out_len; off += BLOCK) {
        unsigned char block[BLOCK];
        const unsigned char *src = in + off;
        if (len - off < BLOCK) {
            memset(block, 0, BLOCK);
            memcpy(block, src, (size_t)(len - off));
            src = block;
        }
        uint32_t pl = load_be32(src), pr = load_be32(src + 4);
        uint32_t l = pl ^ vl, r = pr ^ vr;
        encrypt_block(ks, &l, &r);
        store_be32(out + off, l);
        store_be32(out + off + 4, r);
        vl = pl ^ l;
        vr = pr ^ r;
    }
    release3(&sched, &iv, &data);
    return result;
}

static PyObject *fc_pcbc_decrypt(PyObject *self, PyObject *args)
{
    Py_buffer sched, iv, data;
    uint32_t ks[ROUND_KEYS];
    if (parse_pcbc_args(args, &sched, &iv, &data, ks) < 0)
        return NULL;
    if (data.len % BLOCK) {
        release3(&sched, &iv, &data);
        PyErr_SetString(PyExc_ValueError,
                        "PCBC ciphertext must be a whole number of 8-byte blocks");
        return NULL;
    }

    PyObject *result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        release3(&sched, &iv, &data);
        return NULL;
    }
    const unsigned char *in = data.buf;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    uint32_t vl = load_be32(iv.buf), vr = load_be32((const unsigned char *)iv.buf + 4);

    for (Py_ssize_t off = 0; off < data.len; off += BLOCK) {
        uint32_t cl = load_be32(in + off), cr = load_be32(in + off + 4);
        uint32_t l = cl, r = cr;
        decrypt_block(ks, &l, &r);
        l ^= vl;
        r ^= vr;
        store_be32(out + off, l);
        store_be32(out + off + 4, r);
        vl = cl ^ l;
        vr = cr ^ r;
    }
    release3(&sched, &iv, &data);
    return result;
}

static PyMethodDef fc_methods[] = {
    {"init", fc_init, METH_VARARGS, "Load the four round-function tables (1024 bytes each)."},
    {"pcbc_encrypt", fc_pcbc_encrypt, METH_VARARGS,
     "pcbc_encrypt(schedule, iv, data) -> bytes; zero-pads a partial final block."},
    {"pcbc_decrypt", fc_pcbc_decrypt, METH_VARARGS,
     "pcbc_decrypt(schedule, iv, data) -> bytes; data must be whole 8-byte blocks."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fc_module = {
    PyModuleDef_HEAD_INIT, "_fcrypt", "Compiled fcrypt PCBC for rxkad.", -1, fc_methods,
};

PyMODINIT_FUNC PyInit__fcrypt(void)
{
    return PyModule_Create(&fc_module);
}
