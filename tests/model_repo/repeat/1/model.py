"""A response per element of IN (OUT: the element, IDX: its place), then the final flag;
a negative element gets an error response instead."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().ravel()
            for i, value in enumerate(values):
                if value < 0:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"element {i} is negative")))
                    continue
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.asarray([value], dtype=np.int32)),
                    pb_utils.Tensor("IDX", np.asarray([i], dtype=np.uint32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
