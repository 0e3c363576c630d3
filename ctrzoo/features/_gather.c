/* Column gathers for the request encoder (ctrzoo.features.request): the per-value work of a /rank request.
 *
 * A 100-candidate request holds ~4,000 feature values as the Python objects the JSON parser made. In Python the
 * encoder's fast path touches each of them several times (row tuples, a transpose, a type check, an object
 * array, a hash lookup): ~0.55 ms, a third of the server's event-loop time per request. Here each value is read
 * from its row dict, type-checked and looked up once, in one pass over the rows.
 *
 * gather_ids fills the batch's [rows, columns] id array in place, gather_floats a [fields, rows] array for the
 * numeric transforms; both return True, or return False as soon as a value
 * is of a type they do not decide (anything but exact str/int/None for ids, int/float/None for floats, or a
 * non-finite float, or an int too large for a double): the caller then takes the Python path, which canonicalizes
 * such values or refuses them naming the field. A row dict lacking a key counts as None (missing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* A writable C-contiguous 2-D buffer of 8-byte cells with `rows` rows (and `cols` columns when cols >= 0). */
static int get_out(PyObject *obj, Py_buffer *out, Py_ssize_t rows, Py_ssize_t cols, const char *what) {
    if (PyObject_GetBuffer(obj, out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return -1;
    if (out->ndim != 2 || out->itemsize != 8 || out->shape[0] != rows || (cols >= 0 && out->shape[1] != cols)) {
        PyErr_Format(PyExc_ValueError, "%s: out must be a C-contiguous 2-D array of 8-byte cells with %zd rows%s",
                     what, rows, cols >= 0 ? " and one column per key" : "");
        PyBuffer_Release(out);
        return -1;
    }
    return 0;
}

/* gather_ids(rows: list[dict], keys: tuple[str], tables: tuple[dict], oov: tuple[int], cols: tuple[int],
 *            out: int64 [rows, width]): out[i, cols[k]] = tables[k].get(rows[i].get(keys[k]), oov[k]) */
static PyObject *gather_ids(PyObject *self, PyObject *args) {
    PyObject *rows, *keys, *tables, *oov, *cols, *out_obj;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O", &PyList_Type, &rows, &PyTuple_Type, &keys, &PyTuple_Type, &tables,
                          &PyTuple_Type, &oov, &PyTuple_Type, &cols, &out_obj))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows), f = PyTuple_GET_SIZE(keys);
    if (PyTuple_GET_SIZE(tables) != f || PyTuple_GET_SIZE(oov) != f || PyTuple_GET_SIZE(cols) != f) {
        PyErr_SetString(PyExc_ValueError, "gather_ids: keys, tables, oov and cols differ in length");
        return NULL;
    }
    Py_buffer out;
    if (get_out(out_obj, &out, n, -1, "gather_ids") < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t width = out.shape[1];
    int64_t *dst = (int64_t *)out.buf;
    int64_t *oov_ids = PyMem_Malloc((f ? f : 1) * sizeof(int64_t));
    Py_ssize_t *col = PyMem_Malloc((f ? f : 1) * sizeof(Py_ssize_t));
    if (oov_ids == NULL || col == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < f; k++) {
        if (!PyDict_CheckExact(PyTuple_GET_ITEM(tables, k))) {
            PyErr_SetString(PyExc_TypeError, "gather_ids: tables must be dicts");
            goto done;
        }
        oov_ids[k] = PyLong_AsLongLong(PyTuple_GET_ITEM(oov, k));
        col[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(cols, k));
        if (PyErr_Occurred())
            goto done;
        if (col[k] < 0 || col[k] >= width) {
            PyErr_Format(PyExc_ValueError, "gather_ids: column %zd is outside out's %zd columns", col[k], width);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyDict_CheckExact(row)) {
            result = Py_False;
            goto done;
        }
        int64_t *out_row = dst + i * width;
        for (Py_ssize_t k = 0; k < f; k++) {
            PyObject *value = PyDict_GetItemWithError(row, PyTuple_GET_ITEM(keys, k)); /* borrowed */
            if (value == NULL) {
                if (PyErr_Occurred())
                    goto done;
                value = Py_None;
            } else if (value != Py_None && !PyUnicode_CheckExact(value) && !PyLong_CheckExact(value)) {
                result = Py_False; /* bools, floats, lists, numpy scalars: the caller decides */
                goto done;
            }
            PyObject *id = PyDict_GetItemWithError(PyTuple_GET_ITEM(tables, k), value); /* borrowed */
            if (id == NULL) {
                if (PyErr_Occurred())
                    goto done;
                out_row[col[k]] = oov_ids[k];
            } else {
                long long x = PyLong_AsLongLong(id);
                if (x == -1 && PyErr_Occurred())
                    goto done;
                out_row[col[k]] = x;
            }
        }
    }
    result = Py_True;
done:
    PyMem_Free(oov_ids);
    PyMem_Free(col);
    PyBuffer_Release(&out);
    Py_XINCREF(result);
    return result;
}

/* gather_floats(rows: list[dict], keys: tuple[str], out: float64 [fields, rows]); None and absent keys -> NaN */
static PyObject *gather_floats(PyObject *self, PyObject *args) {
    PyObject *rows, *keys, *out_obj;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &rows, &PyTuple_Type, &keys, &out_obj))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows), f = PyTuple_GET_SIZE(keys);
    Py_buffer out;
    if (get_out(out_obj, &out, f, n, "gather_floats") < 0)  /* [fields, rows] */
        return NULL;
    PyObject *result = NULL;
    double *dst = (double *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyDict_CheckExact(row)) {
            result = Py_False;
            goto done;
        }
        for (Py_ssize_t k = 0; k < f; k++) {
            PyObject *value = PyDict_GetItemWithError(row, PyTuple_GET_ITEM(keys, k)); /* borrowed */
            double x;
            if (value == NULL) {
                if (PyErr_Occurred())
                    goto done;
                x = NAN;
            } else if (value == Py_None) {
                x = NAN;
            } else if (PyFloat_CheckExact(value)) {
                x = PyFloat_AS_DOUBLE(value);
                if (!isfinite(x)) {
                    result = Py_False; /* NaN/Infinity are refused by the per-column path, naming the field */
                    goto done;
                }
            } else if (PyLong_CheckExact(value)) {
                x = PyLong_AsDouble(value);
                if (x == -1.0 && PyErr_Occurred()) {
                    PyErr_Clear(); /* too large for a double: the per-column path decides */
                    result = Py_False;
                    goto done;
                }
            } else {
                result = Py_False;
                goto done;
            }
            dst[k * n + i] = x;
        }
    }
    result = Py_True;
done:
    PyBuffer_Release(&out);
    Py_XINCREF(result);
    return result;
}

static PyMethodDef methods[] = {
    {"gather_ids", gather_ids, METH_VARARGS,
     "gather_ids(rows, keys, tables, oov, cols, out) -> bool: table[row[key]] (oov when absent) into out[row, col]."},
    {"gather_floats", gather_floats, METH_VARARGS,
     "gather_floats(rows, keys, out) -> bool: float(row[key]) (NaN for None or absent) into out[field, row]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ctrzoo.features._gather",
                                    "Per-value gathers of the request encoder (see _gather.c).", -1, methods};

PyMODINIT_FUNC PyInit__gather(void) { return PyModule_Create(&module); }
