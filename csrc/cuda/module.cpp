// Python module stub: `import corp_kernels._C_cuda` loads the corp_cuda torch ops.
#include <Python.h>

static struct PyModuleDef corp_kernels_c_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr,
                                                        -1, nullptr};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&corp_kernels_c_cuda_module); }
