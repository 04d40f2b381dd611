"""Sum and difference of two tensors of numbers (their own datatype kept)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if a.dtype == np.object_:  # numbers as strings
                x, y = a.astype(np.int64), b.astype(np.int64)
                total = np.char.encode((x + y).astype(str)).astype(np.object_)
                diff = np.char.encode((x - y).astype(str)).astype(np.object_)
            else:
                total, diff = (a + b).astype(a.dtype), (a - b).astype(a.dtype)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total),
                                                   pb_utils.Tensor("OUTPUT1", diff)]))
        return out
