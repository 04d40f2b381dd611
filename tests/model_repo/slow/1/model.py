"""Sleeps, then scores every claim 0.5: a slow backend for tests."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.default_delay_ms = float(config["parameters"]["delay_ms"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters() or "{}")
            time.sleep(float(params.get("delay_ms", self.default_delay_ms)) / 1000)
            features = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            scores = np.full((len(features), 1), 0.5, dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("risk_score", scores)]))
        return responses
