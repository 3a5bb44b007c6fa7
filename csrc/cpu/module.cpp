// Python module stub: `import corp_kernels._C` loads this library, whose static initializers
// register the corp_cpu ops with the torch dispatcher. There are no Python-level functions.
#include <Python.h>

static struct PyModuleDef corp_kernels_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                                   nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&corp_kernels_c_module); }
