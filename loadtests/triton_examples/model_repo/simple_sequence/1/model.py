"""OUTPUT = INPUT, + 1 on a sequence's first request."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT", (value + start.reshape(value.shape)).astype(value.dtype))]))
        return out
