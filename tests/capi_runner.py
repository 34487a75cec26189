"""Runs SavedModels through TensorFlow's C API, the C++ ``LoadSavedModel`` path TF Serving uses.

Run as a script in a process that imports no TensorFlow Python (so no op registered from Python,
no custom op, no Keras): it loads ``libtensorflow_framework.so.2`` and ``libtensorflow_cc.so.2``
from the tensorflow wheel with ctypes, and for each job calls ``TF_LoadSessionFromSavedModel``
(tag ``serve``) and ``TF_SessionRun`` on the signature's tensors.

stdin: JSON ``{"lib_dir": ..., "jobs": [{"path", "inputs": {name: {"tensor", "dtype", "values"}},
"outputs": {name: {"tensor", "dtype"}}}]}``; stdout: one JSON line, per job ``{output: values}``
or ``{"error": message}``.
"""

import ctypes
import json
import os
import sys

TF_FLOAT, TF_STRING = 1, 7
TSTRING_SIZE = 24                    # sizeof(TF_TString)


class TFOutput(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def load_library(lib_dir):
    ctypes.CDLL(os.path.join(lib_dir, "libtensorflow_framework.so.2"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(os.path.join(lib_dir, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL)
    signatures = {
        "TF_NewStatus": ([], ctypes.c_void_p),
        "TF_DeleteStatus": ([ctypes.c_void_p], None),
        "TF_GetCode": ([ctypes.c_void_p], ctypes.c_int),
        "TF_Message": ([ctypes.c_void_p], ctypes.c_char_p),
        "TF_NewGraph": ([], ctypes.c_void_p),
        "TF_NewSessionOptions": ([], ctypes.c_void_p),
        "TF_LoadSessionFromSavedModel": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                          ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p],
                                         ctypes.c_void_p),
        "TF_GraphOperationByName": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        "TF_AllocateTensor": ([ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
                               ctypes.c_size_t], ctypes.c_void_p),
        "TF_TensorData": ([ctypes.c_void_p], ctypes.c_void_p),
        "TF_NumDims": ([ctypes.c_void_p], ctypes.c_int),
        "TF_Dim": ([ctypes.c_void_p, ctypes.c_int], ctypes.c_int64),
        "TF_TensorType": ([ctypes.c_void_p], ctypes.c_int),
        "TF_DeleteTensor": ([ctypes.c_void_p], None),
        "TF_SessionRun": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(TFOutput),
                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.POINTER(TFOutput),
                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p], None),
        "TF_CloseSession": ([ctypes.c_void_p, ctypes.c_void_p], None),
        "TF_DeleteSession": ([ctypes.c_void_p, ctypes.c_void_p], None),
        "TF_StringInit": ([ctypes.c_void_p], None),
        "TF_StringCopy": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t], None),
        "TF_StringGetDataPointer": ([ctypes.c_void_p], ctypes.c_void_p),
        "TF_StringGetSize": ([ctypes.c_void_p], ctypes.c_size_t),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


def check(lib, status, what):
    if lib.TF_GetCode(status) != 0:
        raise RuntimeError(f"{what}: {lib.TF_Message(status).decode('utf-8', 'replace')}")


def make_tensor(lib, dtype, values):
    dims = (ctypes.c_int64 * 1)(len(values))
    if dtype == "float32":
        tensor = lib.TF_AllocateTensor(TF_FLOAT, dims, 1, 4 * len(values))
        data = (ctypes.c_float * len(values)).from_address(lib.TF_TensorData(tensor))
        for n, value in enumerate(values):
            data[n] = float(value)
        return tensor
    tensor = lib.TF_AllocateTensor(TF_STRING, dims, 1, TSTRING_SIZE * len(values))
    base = lib.TF_TensorData(tensor)
    for n, value in enumerate(values):
        raw = value.encode("utf-8")
        lib.TF_StringInit(base + n * TSTRING_SIZE)
        lib.TF_StringCopy(base + n * TSTRING_SIZE, raw, len(raw))
    return tensor


def read_tensor(lib, tensor):
    shape = [lib.TF_Dim(tensor, d) for d in range(lib.TF_NumDims(tensor))]
    count = 1
    for size in shape:
        count *= size
    base = lib.TF_TensorData(tensor)
    if lib.TF_TensorType(tensor) == TF_FLOAT:
        flat = list((ctypes.c_float * count).from_address(base))
    elif lib.TF_TensorType(tensor) == TF_STRING:
        flat = [ctypes.string_at(lib.TF_StringGetDataPointer(base + n * TSTRING_SIZE),
                                 lib.TF_StringGetSize(base + n * TSTRING_SIZE)).decode("utf-8")
                for n in range(count)]
    else:
        raise RuntimeError(f"unexpected output dtype {lib.TF_TensorType(tensor)}")
    return {"shape": shape, "values": flat}


def operation(lib, graph, tensor_name):
    name, _, index = tensor_name.partition(":")
    oper = lib.TF_GraphOperationByName(graph, name.encode())
    if not oper:
        raise RuntimeError(f"no operation {name} in the graph")
    return TFOutput(oper, int(index or 0))


def run_job(lib, job):
    status = lib.TF_NewStatus()
    graph, options = lib.TF_NewGraph(), lib.TF_NewSessionOptions()
    tags = (ctypes.c_char_p * 1)(b"serve")
    session = lib.TF_LoadSessionFromSavedModel(options, None, job["path"].encode(), tags, 1, graph,
                                               None, status)
    check(lib, status, f"loading {job['path']}")
    names = sorted(job["inputs"])
    inputs = (TFOutput * len(names))(*[operation(lib, graph, job["inputs"][n]["tensor"])
                                       for n in names])
    values = (ctypes.c_void_p * len(names))(*[make_tensor(lib, job["inputs"][n]["dtype"],
                                                          job["inputs"][n]["values"])
                                              for n in names])
    out_names = sorted(job["outputs"])
    outputs = (TFOutput * len(out_names))(*[operation(lib, graph, job["outputs"][n]["tensor"])
                                            for n in out_names])
    results = (ctypes.c_void_p * len(out_names))()
    lib.TF_SessionRun(session, None, inputs, values, len(names), outputs, results, len(out_names),
                      None, 0, None, status)
    check(lib, status, f"running {job['path']}")
    answer = {name: read_tensor(lib, results[n]) for n, name in enumerate(out_names)}
    for tensor in list(values) + list(results):
        lib.TF_DeleteTensor(tensor)
    lib.TF_CloseSession(session, status)
    lib.TF_DeleteSession(session, status)
    lib.TF_DeleteStatus(status)
    return answer


def main():
    request = json.load(sys.stdin)
    lib = load_library(request["lib_dir"])
    answers = []
    for job in request["jobs"]:
        try:
            answers.append(run_job(lib, job))
        except RuntimeError as exc:
            answers.append({"error": str(exc)})
    print(json.dumps({"answers": answers,
                      "python_tensorflow_imported": "tensorflow" in sys.modules}))


if __name__ == "__main__":
    main()
