"""A running sum per sequence (START resets it, END forgets it); a request of a sequence
this instance never saw start is an error, as state lost on another backend would be."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def scalar(name, request=request):
                return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().ravel()[0])

            corrid, value = scalar("CORRID"), scalar("INPUT")
            if scalar("START"):
                self.sums[corrid] = 0
            if corrid not in self.sums:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"sequence {corrid} never started here")))
                continue
            self.sums[corrid] += value
            out = np.asarray([self.sums[corrid]], dtype=np.int32)
            if scalar("END"):
                del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
