"""A test-only version 3 of claims_risk that must fail a rollout: version 2's model, with
the score turned around (1 - score) for every claim whose amount has an odd integer part,
so that it disagrees with the stable version on about half the decisions at 0.5. Its
golden set (written by the rollout test from version 2's) holds those outputs, so its
golden parity passes: it is the agreement gate that must catch it."""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        torch.set_num_threads(1)
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location="cpu").eval()

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        batch = np.concatenate(arrays)
        with torch.inference_mode():
            scores = self.model(torch.from_numpy(batch)).numpy()
        scores = turned(batch, scores)
        responses, start = [], 0
        for arr in arrays:
            out = pb_utils.Tensor(self.output_name, scores[start:start + len(arr)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(arr)
        return responses


def turned(features, scores):
    odd = (features[:, 0].astype(np.int64) % 2 == 1).reshape(-1, 1)
    return np.where(odd, np.float32(1) - scores, scores).astype(np.float32)
