"""Triton python backend for claims_risk: serves the version's TorchScript ``model.pt``.

Each version folder links here, so every version runs the same serving code and differs
only by its trained artefact. Requests that Triton batched together are scored in one
forward pass.
"""

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
        if args["model_instance_kind"] == "GPU" and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            # Training ran single-threaded; the same here keeps outputs bit-stable.
            torch.set_num_threads(1)
            self.device = torch.device("cpu")
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        pb_utils.Logger.log_info(f"claims_risk v{args['model_version']} on {self.device}")

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        batch = torch.from_numpy(np.concatenate(arrays)).to(self.device)
        with torch.inference_mode():
            scores = self.model(batch).cpu().numpy()
        responses, start = [], 0
        for arr in arrays:
            out = pb_utils.Tensor(self.output_name, scores[start:start + len(arr)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(arr)
        return responses
